//! Byte streams for the codec: encoding messages back to back, cutting a
//! stream at arbitrary points and decoding it piece by piece, hand-built
//! frames, and the re-encoding check every decoded message must pass.

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::sample::Index;
use semikv_protocol::frame::HEADER_LEN;
use semikv_protocol::{Message, MessageCodec, ProtocolError};
use tokio_util::codec::{Decoder, Encoder};

pub(crate) fn encode_all(messages: &[Message]) -> BytesMut {
    let mut codec = MessageCodec::default();
    let mut buf = BytesMut::new();
    for m in messages {
        codec.encode(m, &mut buf).unwrap();
    }
    buf
}

/// Sorted, deduplicated cut points inside `len`, from arbitrary indexes.
pub(crate) fn cut_points(cuts: &[Index], len: usize) -> Vec<usize> {
    let mut points: Vec<usize> = if len == 0 {
        Vec::new()
    } else {
        cuts.iter().map(|i| i.index(len)).collect()
    };
    points.sort_unstable();
    points.dedup();
    points
}

/// Everything the decoder produced from `stream` fed in pieces cut at `cuts`,
/// then EOF; stops at the first error.
pub(crate) fn decode_chunked(
    codec: &mut MessageCodec,
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<Message>, Option<ProtocolError>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// A frame around `payload` with a correct length and checksum, so that the
/// bytes reach the message decoder instead of failing the checksum.
pub(crate) fn frame_of(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Whatever a decoder accepted must be a message we can send back unchanged.
pub(crate) fn assert_reencodes(m: &Message) -> Result<(), TestCaseError> {
    let mut codec = MessageCodec::default();
    let mut buf = BytesMut::new();
    codec.encode(m, &mut buf).unwrap();
    let back = codec.decode_eof(&mut buf).unwrap().unwrap();
    prop_assert_eq!(&back, m);
    prop_assert!(buf.is_empty());
    Ok(())
}
