//! Request frames for a replica connection: encoded in place from the op a
//! pending entry keeps, and checked against the frame limit before anything
//! is registered.

use bytes::BytesMut;
use semikv_protocol::{frame, Message, Op, Request, RequestId};

use semikv_protocol::outbox::Outbound;

/// Appends the frame of request `id` for `op` to `buf`, from the op itself
/// (put back afterwards, so it can stay with its pending entry); on an error
/// (too long for a frame) `buf` is as it was.
pub(super) fn encode_request(
    id: u64,
    op: &mut Op,
    max_frame_len: usize,
    buf: &mut BytesMut,
) -> Result<(), semikv_protocol::ProtocolError> {
    let message = Message::Request(Request {
        id: RequestId(id),
        op: std::mem::replace(op, Op::Ping),
    });
    let encoded = frame::encode(&message, max_frame_len, buf);
    if let Message::Request(request) = message {
        *op = request.op;
    }
    encoded
}

/// Whether `op` fits in a frame of `max_frame_len` under any request id,
/// from a bound on its encoding (tags, the longest id, length prefixes and
/// its bytes); `false` only means "encode it to find out". Most requests
/// are far below the limit and go to the outbox unencoded, with no buffer
/// of their own.
pub(super) fn surely_fits(op: &Op, max_frame_len: usize) -> bool {
    const OVERHEAD: usize = 32;
    let body = match op {
        Op::Get { key } | Op::Delete { key } => key.len(),
        Op::Set { key, value } => key.len().saturating_add(value.len()),
        _ => return false,
    };
    body.saturating_add(OVERHEAD) <= max_frame_len
}

/// The queue entry for request `id` when `op` may be near the frame limit
/// (encoded here, so that one too long is refused before it is registered),
/// `None` when it surely fits (see [`request_out`]).
pub(super) fn checked_frame(
    id: u64,
    op: &mut Op,
    max_frame_len: usize,
) -> Result<Option<Outbound>, semikv_protocol::ProtocolError> {
    if surely_fits(op, max_frame_len) {
        return Ok(None);
    }
    let mut frame = BytesMut::new();
    encode_request(id, op, max_frame_len, &mut frame)?;
    Ok(Some(Outbound::Frames(frame.freeze())))
}

/// The queue entry for request `id`, encoded by the outbox.
pub(super) fn request_out(id: u64, op: Op) -> Outbound {
    Message::Request(Request {
        id: RequestId(id),
        op,
    })
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_surely_fits_encodes_under_the_longest_id() {
        for max in [32, 40, 64, 300, 70_000, 200_000] {
            for len in (0..max + 2).step_by(if max > 1000 { 997 } else { 1 }) {
                let key = bytes::Bytes::from(vec![b'k'; len.min(66_000)]);
                let ops = [
                    Op::Get { key: key.clone() },
                    Op::Delete { key: key.clone() },
                    Op::Set {
                        key: key.slice(..key.len() / 2),
                        value: vec![b'v'; len - key.len() / 2].into(),
                    },
                ];
                for mut op in ops {
                    if surely_fits(&op, max) {
                        let mut buf = BytesMut::new();
                        assert!(
                            encode_request(u64::MAX, &mut op, max, &mut buf).is_ok(),
                            "{len} bytes judged to fit in {max}"
                        );
                    }
                }
            }
        }
        // And the bound is not so loose that ordinary requests miss the
        // fast path.
        let op = Op::Set {
            key: "key".into(),
            value: vec![0u8; 100].into(),
        };
        assert!(surely_fits(&op, 200));
    }
}
