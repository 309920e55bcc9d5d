//! Properties of the frame around a message: the header describes the
//! payload, oversized lengths are refused before any allocation, bit flips
//! are caught, a cut stream is `Truncated`, and random bytes never panic.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use semikv_protocol::frame::{DEFAULT_MAX_FRAME_LEN, HEADER_LEN};
use semikv_protocol::{MessageCodec, ProtocolError};
use tokio_util::codec::Decoder;

use crate::strategies::message;
use crate::stream::{assert_reencodes, cut_points, decode_chunked, encode_all};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The header is what the frame layout promises: the payload's length and
    /// its crc32, big-endian.
    #[test]
    fn header_describes_the_payload(m in message()) {
        let buf = encode_all(std::slice::from_ref(&m));
        let len = u32::from_be_bytes(buf[0..4].try_into().unwrap()) as usize;
        let crc = u32::from_be_bytes(buf[4..8].try_into().unwrap());
        prop_assert_eq!(len, buf.len() - HEADER_LEN);
        prop_assert_eq!(crc, crc32fast::hash(&buf[HEADER_LEN..]));
    }

    /// Random bytes, chunked, never panic; anything they decode to re-encodes.
    #[test]
    fn random_bytes_never_panic(
        stream in vec(any::<u8>(), 0..512),
        cuts in vec(any::<Index>(), 0..8),
        small_limit in any::<bool>(),
    ) {
        let mut codec = MessageCodec::new(if small_limit { 64 } else { DEFAULT_MAX_FRAME_LEN });
        let cuts = cut_points(&cuts, stream.len());
        let (decoded, _err) = decode_chunked(&mut codec, &stream, &cuts);
        for m in &decoded {
            assert_reencodes(m)?;
        }
    }

    /// Any announced length over the limit is rejected as soon as the header
    /// is in, whatever follows, without reserving room for the frame.
    #[test]
    fn oversized_length_is_rejected_without_allocating(
        len in (1025u32..=u32::MAX),
        crc in any::<u32>(),
        tail in vec(any::<u8>(), 0..32),
    ) {
        let mut codec = MessageCodec::new(1024);
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&crc.to_be_bytes());
        buf.extend_from_slice(&tail);
        let err = codec.decode(&mut buf).unwrap_err();
        prop_assert!(
            matches!(err, ProtocolError::FrameTooLarge { len: l, max: 1024 } if l == u64::from(len)),
            "got {:?}",
            err
        );
        prop_assert!(buf.capacity() <= 128, "buffer grew to {}", buf.capacity());
    }

    /// Every single-bit flip in the checksum or the payload is a checksum
    /// mismatch (CRC-32 detects all single-bit errors).
    #[test]
    fn bit_flip_in_crc_or_payload_is_a_checksum_mismatch(m in message()) {
        let frame = encode_all(std::slice::from_ref(&m));
        for bit in (4 * 8)..(frame.len() * 8) {
            let mut buf = frame.clone();
            buf[bit / 8] ^= 1 << (bit % 8);
            let result = MessageCodec::default().decode_eof(&mut buf);
            prop_assert!(
                matches!(result, Err(ProtocolError::ChecksumMismatch { .. })),
                "flip of bit {} gave {:?}",
                bit,
                result
            );
        }
    }

    /// A flip in the length field never yields a message: the frame is then
    /// too large, incomplete (more bytes awaited, `Truncated` at EOF), or
    /// checked over the wrong bytes.
    #[test]
    fn bit_flip_in_length_never_yields_a_message(m in message()) {
        let frame = encode_all(std::slice::from_ref(&m));
        for bit in 0..32 {
            let mut flipped = frame.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);

            let mut buf = flipped.clone();
            let live = MessageCodec::default().decode(&mut buf);
            prop_assert!(
                matches!(live, Ok(None) | Err(_)),
                "flip of length bit {} decoded {:?}",
                bit,
                live
            );

            let mut buf = flipped;
            let at_eof = MessageCodec::default().decode_eof(&mut buf);
            prop_assert!(at_eof.is_err(), "flip of length bit {} gave {:?} at EOF", bit, at_eof);
        }
    }

    /// A stream that ends mid-frame yields every whole frame before the cut,
    /// then `Truncated` saying how much arrived and how much was needed.
    #[test]
    fn eof_mid_frame_is_truncated(
        whole in vec(message(), 0..4),
        last in message(),
        cut in any::<Index>(),
    ) {
        let prefix = encode_all(&whole);
        let last_frame = encode_all(std::slice::from_ref(&last));
        // 1..len: at least one byte of the last frame, never all of it.
        let keep = 1 + cut.index(last_frame.len() - 1);
        let mut stream = prefix.clone();
        stream.extend_from_slice(&last_frame[..keep]);

        let (decoded, err) = decode_chunked(&mut MessageCodec::default(), &stream, &[]);
        prop_assert_eq!(decoded, whole);
        let need = if keep < HEADER_LEN { HEADER_LEN } else { last_frame.len() };
        match err {
            Some(ProtocolError::Truncated { have, need: n }) => {
                prop_assert_eq!(have, keep as u64);
                prop_assert_eq!(n, need as u64);
            }
            other => prop_assert!(false, "expected Truncated, got {:?}", other),
        }
    }
}

/// The exact hostile header from the brief: 0xFFFFFFFF against the default
/// limit, through both `decode` and `decode_eof`.
#[test]
fn all_ones_length_is_frame_too_large_and_buffer_stays_small() {
    for eof in [false, true] {
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 2, 3]);
        let result = if eof {
            codec.decode_eof(&mut buf)
        } else {
            codec.decode(&mut buf)
        };
        let err = result.unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::FrameTooLarge { len: 0xffff_ffff, max }
                    if max == DEFAULT_MAX_FRAME_LEN as u64
            ),
            "got {err:?}"
        );
        assert!(buf.capacity() <= 64, "buffer grew to {}", buf.capacity());
    }
}

/// A header fed one byte at a time never reserves before it is whole and
/// checked.
#[test]
fn all_ones_length_fed_bytewise_never_reserves_the_frame() {
    let mut codec = MessageCodec::default();
    let mut buf = BytesMut::new();
    let header = [0xffu8, 0xff, 0xff, 0xff, 0, 0, 0, 0];
    for (i, b) in header.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let result = codec.decode(&mut buf);
        if i + 1 < HEADER_LEN {
            assert!(matches!(result, Ok(None)), "got {result:?}");
        } else {
            assert!(matches!(result, Err(ProtocolError::FrameTooLarge { .. })));
        }
        assert!(buf.capacity() <= 64, "buffer grew to {}", buf.capacity());
    }
}
