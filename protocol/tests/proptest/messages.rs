//! Properties of the messages frames carry: any sequence of them survives
//! encoding and arbitrary stream splits; a payload decodes to a message that
//! re-encodes or fails as `Undecodable`, and trailing bytes are refused.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use semikv_protocol::frame::HEADER_LEN;
use semikv_protocol::{MessageCodec, ProtocolError};
use tokio_util::codec::Decoder;

use crate::strategies::message;
use crate::stream::{assert_reencodes, cut_points, decode_chunked, encode_all, frame_of};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Back-to-back frames split anywhere decode to exactly the messages sent,
    /// in order, with nothing left over.
    #[test]
    fn chunked_stream_round_trips(
        messages in vec(message(), 1..8),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let stream = encode_all(&messages);
        let cuts = cut_points(&cuts, stream.len());
        let (decoded, err) = decode_chunked(&mut MessageCodec::default(), &stream, &cuts);
        prop_assert!(err.is_none(), "unexpected error {:?}", err);
        prop_assert_eq!(decoded, messages);
    }

    /// Random payloads inside well-formed frames reach postcard: they decode
    /// to a message or fail with `Undecodable`, never anything else, never a
    /// panic.
    #[test]
    fn random_payloads_in_valid_frames_are_decoded_or_undecodable(
        payload in vec(any::<u8>(), 0..256),
    ) {
        let mut buf = BytesMut::from(&frame_of(&payload)[..]);
        match MessageCodec::default().decode_eof(&mut buf) {
            Ok(Some(m)) => assert_reencodes(&m)?,
            Ok(None) => prop_assert!(false, "a whole frame decoded to nothing"),
            Err(ProtocolError::Undecodable { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {:?}", e),
        }
        prop_assert!(buf.is_empty(), "the frame was not consumed");
    }

    /// A valid message's payload with junk appended is rejected, not silently
    /// accepted: trailing bytes are an error.
    #[test]
    fn trailing_bytes_in_a_payload_are_undecodable(
        m in message(),
        junk in vec(any::<u8>(), 1..16),
    ) {
        let encoded = encode_all(std::slice::from_ref(&m));
        let mut payload = encoded[HEADER_LEN..].to_vec();
        payload.extend_from_slice(&junk);
        let mut buf = BytesMut::from(&frame_of(&payload)[..]);
        let result = MessageCodec::default().decode_eof(&mut buf);
        prop_assert!(
            matches!(result, Err(ProtocolError::Undecodable { .. })),
            "got {:?}",
            result
        );
    }
}
