//! A `tokio_util` codec that turns a byte stream into [`Message`]s and back,
//! one [`crate::frame`] per message.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::ProtocolError;
use crate::frame::{self, Header, DEFAULT_MAX_FRAME_LEN, HEADER_LEN};
use crate::message::Message;

/// Frames [`Message`]s with a payload limit in both directions.
///
/// The decoder reserves at most one frame of buffer, and only after the
/// header's length has passed the limit check. After it returns an error the
/// stream is unusable: send the peer [`Message::Reject`] and close.
#[derive(Debug, Clone, Copy)]
pub struct MessageCodec {
    max_frame_len: usize,
}

impl MessageCodec {
    /// A codec that refuses payloads longer than `max_frame_len`.
    pub fn new(max_frame_len: usize) -> MessageCodec {
        MessageCodec { max_frame_len }
    }

    /// The payload limit.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }
}

impl Default for MessageCodec {
    fn default() -> Self {
        MessageCodec::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl Decoder for MessageCodec {
    type Item = Message;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        let Some(header) = Header::parse(src) else {
            src.reserve(HEADER_LEN - src.len());
            return Ok(None);
        };
        frame::check_len(header, self.max_frame_len)?;
        let frame_len = header.frame_len();
        if src.len() < frame_len {
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        let result = frame::decode_payload(header, &src[HEADER_LEN..frame_len]);
        src.advance(frame_len);
        result.map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => {
                let need = Header::parse(src).map_or(HEADER_LEN, |h| h.frame_len());
                Err(ProtocolError::Truncated {
                    have: src.len() as u64,
                    need: need as u64,
                })
            }
        }
    }
}

impl Encoder<&Message> for MessageCodec {
    type Error = ProtocolError;

    fn encode(&mut self, item: &Message, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        frame::encode(item, self.max_frame_len, dst)
    }
}

impl Encoder<Message> for MessageCodec {
    type Error = ProtocolError;

    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        frame::encode(&item, self.max_frame_len, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Hello, Role};

    #[test]
    fn huge_length_header_is_rejected_without_allocating() {
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4][..]);
        let before = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge {
                len: 0xffff_ffff,
                max
            } if max == DEFAULT_MAX_FRAME_LEN as u64
        ));
        assert!(buf.capacity() <= before.max(64), "decoder grew the buffer");
    }

    #[test]
    fn eof_mid_frame_is_truncated() {
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::new();
        codec
            .encode(Message::Hello(Hello::new(Role::Client, None)), &mut buf)
            .unwrap();
        buf.truncate(buf.len() - 1);
        let err = codec.decode_eof(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::Truncated { .. }));
    }

    #[test]
    fn garbage_payload_is_undecodable() {
        let mut codec = MessageCodec::default();
        let payload = [0xEEu8, 0xEE, 0xEE];
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
        buf.extend_from_slice(&payload);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::Undecodable { .. }));
    }
}
