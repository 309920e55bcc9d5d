//! Fuzz target `decode`: arbitrary bytes, cut into arbitrary chunks, through
//! `MessageCodec::decode`/`decode_eof`.
//!
//! Checks, for every input:
//! - the decoder never panics and never buffers a frame over its limit;
//! - chunked decoding agrees with decoding the whole buffer at once (same
//!   messages, error at the same point), so partial reads cannot change
//!   what a stream means;
//! - every decoded message re-encodes, and that encoding decodes back equal.
//!
//! Input layout: byte 0 seeds the chunk sizes, the rest is the stream.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use semikv_protocol::{Message, MessageCodec};
use tokio_util::codec::{Decoder, Encoder};

/// Small enough that a hostile length header near the limit stays cheap.
const MAX_FRAME_LEN: usize = 64 * 1024;

/// What a stream decoded to: its messages, then whether it ended in an error.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Message>,
    failed: bool,
}

/// Deterministic chunk sizes from a seed (xorshift), 1..=max_chunk bytes.
struct Chunks {
    state: u32,
    max_chunk: usize,
}

impl Chunks {
    fn new(seed: u8) -> Chunks {
        // Low seeds give tiny chunks (byte at a time), high ones big chunks.
        let max_chunk = match seed % 4 {
            0 => 1,
            1 => 8,
            2 => 64,
            _ => 4096,
        };
        Chunks {
            state: u32::from(seed) | 0x9e37_0000,
            max_chunk,
        }
    }

    fn next_len(&mut self) -> usize {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        1 + self.state as usize % self.max_chunk
    }
}

fn decode_chunked(stream: &[u8], seed: u8) -> Outcome {
    let mut codec = MessageCodec::new(MAX_FRAME_LEN);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut chunks = Chunks::new(seed);
    let mut rest = stream;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(chunks.next_len().min(rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => break,
                Err(_) => {
                    return Outcome {
                        messages,
                        failed: true,
                    }
                }
            }
        }
        // The decoder may reserve one frame ahead, never more.
        assert!(
            buf.capacity() <= (MAX_FRAME_LEN + 8).max(stream.len()) * 2 + 64,
            "decoder buffer grew to {} for a {}-byte stream",
            buf.capacity(),
            stream.len()
        );
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(m)) => messages.push(m),
            Ok(None) => {
                return Outcome {
                    messages,
                    failed: false,
                }
            }
            Err(_) => {
                return Outcome {
                    messages,
                    failed: true,
                }
            }
        }
    }
}

fn decode_whole(stream: &[u8]) -> Outcome {
    let mut codec = MessageCodec::new(MAX_FRAME_LEN);
    let mut buf = BytesMut::from(stream);
    let mut messages = Vec::new();
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(m)) => messages.push(m),
            Ok(None) => {
                return Outcome {
                    messages,
                    failed: false,
                }
            }
            Err(_) => {
                return Outcome {
                    messages,
                    failed: true,
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let chunked = decode_chunked(stream, seed);
    let whole = decode_whole(stream);
    assert_eq!(chunked, whole, "chunking changed the decoded stream");

    let mut codec = MessageCodec::new(MAX_FRAME_LEN);
    for m in &chunked.messages {
        let mut encoded = BytesMut::new();
        codec
            .encode(m, &mut encoded)
            .expect("a decoded message re-encodes within the same limit");
        let back = codec
            .decode_eof(&mut encoded)
            .expect("a re-encoded message decodes")
            .expect("a re-encoded message is one whole frame");
        assert_eq!(&back, m, "encode(decode(x)) decodes to something else");
        assert!(encoded.is_empty(), "re-encoding left trailing bytes");
    }
});
