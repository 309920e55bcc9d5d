//! The bench's requests written straight from borrowed text: keys and
//! values rendered into reusable buffers and framed without building a
//! [`semikv_protocol::Message`], byte for byte what encoding the message
//! would produce (the tests compare the two).
//!
//! Why: a `Message` owns its key and value as `Bytes`, so every request
//! either allocated them or shared a per-lane buffer whose reference count,
//! offsets and key bytes were cold by the time the lane came round again
//! (three cache misses per request, a fifth of the load generator's CPU).
//! The key is instead rendered from a per-connection prefix and the key
//! number, both warm.

use bytes::BytesMut;
use semikv_protocol::{frame, ProtocolError};

/// `Message::Request`'s variant index: postcard writes an enum as its
/// variant index (a varint, one byte below 128) and then its fields in order.
const MESSAGE_REQUEST: u8 = 3;
/// `Op::Get`'s variant index.
const OP_GET: u8 = 0;
/// `Op::Set`'s variant index.
const OP_SET: u8 = 1;

/// Appends `n` in decimal, as `write!(out, "{n}")` would, without the
/// formatting machinery.
pub(super) fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // `n % 10` < 10: the cast cannot truncate.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// Replaces `out` with key `k` of a connection whose keys begin with
/// `prefix`: `{prefix}{k}`.
pub(super) fn write_key(out: &mut String, prefix: &str, k: u64) {
    out.clear();
    out.push_str(prefix);
    push_decimal(out, k);
}

/// Replaces `out` with value `seq` of `client` for its key number `key`, the
/// same bytes as [`super::model::make_value`]: `{client}:{seq}:{key}:`
/// padded with `x` to `size`.
pub(super) fn write_value(out: &mut String, client: u32, key: u64, seq: u64, size: usize) {
    out.clear();
    push_decimal(out, u64::from(client));
    out.push(':');
    push_decimal(out, seq);
    out.push(':');
    push_decimal(out, key);
    out.push(':');
    let pad = size.saturating_sub(out.len());
    out.extend(std::iter::repeat_n('x', pad));
}

/// Appends the frame of `Message::Request(Request { id, op: Op::Get { key } })`.
///
/// A postcard tuple is its fields one after the other, and a `str` is
/// written like `Bytes` (length varint, then the bytes), so this tuple is
/// the message's exact encoding.
///
/// # Errors
/// As [`frame::encode`]: the payload is longer than `max_len`.
pub(super) fn encode_get(
    id: u64,
    key: &str,
    max_len: usize,
    out: &mut BytesMut,
) -> Result<(), ProtocolError> {
    frame::encode(&(MESSAGE_REQUEST, id, OP_GET, key), max_len, out)
}

/// Appends the frame of
/// `Message::Request(Request { id, op: Op::Set { key, value } })`.
///
/// # Errors
/// As [`frame::encode`]: the payload is longer than `max_len`.
pub(super) fn encode_set(
    id: u64,
    key: &str,
    value: &str,
    max_len: usize,
    out: &mut BytesMut,
) -> Result<(), ProtocolError> {
    frame::encode(&(MESSAGE_REQUEST, id, OP_SET, key, value), max_len, out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use semikv_protocol::{Message, Op, Request, RequestId};
    use std::fmt::Write as _;

    fn real(id: u64, op: Op, max_len: usize) -> Result<BytesMut, ProtocolError> {
        let mut out = BytesMut::from(&b"before"[..]);
        frame::encode(
            &Message::Request(Request {
                id: RequestId(id),
                op,
            }),
            max_len,
            &mut out,
        )
        .map(|()| out)
    }

    fn ours(
        id: u64,
        key: &str,
        value: Option<&str>,
        max_len: usize,
    ) -> Result<BytesMut, ProtocolError> {
        let mut out = BytesMut::from(&b"before"[..]);
        match value {
            Some(value) => encode_set(id, key, value, max_len, &mut out),
            None => encode_get(id, key, max_len, &mut out),
        }
        .map(|()| out)
    }

    #[test]
    fn requests_encode_exactly_like_the_message() {
        for id in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            for key in ["", "k", "bench-00ab12-49-255", &"long".repeat(100)] {
                let get = Op::Get {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                };
                assert_eq!(
                    ours(id, key, None, 1 << 20).unwrap(),
                    real(id, get, 1 << 20).unwrap()
                );
                for value in ["", "7:42:xxxx", &"v".repeat(300)] {
                    let set = Op::Set {
                        key: Bytes::copy_from_slice(key.as_bytes()),
                        value: Bytes::copy_from_slice(value.as_bytes()),
                    };
                    assert_eq!(
                        ours(id, key, Some(value), 1 << 20).unwrap(),
                        real(id, set, 1 << 20).unwrap()
                    );
                }
            }
        }
    }

    #[test]
    fn a_request_over_the_limit_is_refused_and_leaves_the_buffer_alone() {
        let mut out = BytesMut::from(&b"before"[..]);
        assert!(encode_set(1, "key", &"v".repeat(100), 50, &mut out).is_err());
        assert!(encode_get(1, &"k".repeat(100), 50, &mut out).is_err());
        assert_eq!(&out[..], b"before");
        // The real message is refused at the same size.
        let set = Op::Set {
            key: Bytes::from_static(b"key"),
            value: Bytes::from(vec![b'v'; 100]),
        };
        assert!(real(1, set, 50).is_err());
    }

    #[test]
    fn decimals_keys_and_values_match_the_formatted_ones() {
        let mut out = String::from("junk");
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            out.clear();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string());
            write_key(&mut out, "bench-0000ff-3-", n);
            assert_eq!(out, format!("bench-0000ff-3-{n}"));
        }
        for (client, key, seq, size) in [
            (0, 0, 0, 0),
            (7, 255, 42, 100),
            (49, 3, 1, 16),
            (u32::MAX, u64::MAX, u64::MAX, 16),
        ] {
            write_value(&mut out, client, key, seq, size);
            assert_eq!(
                out.as_bytes(),
                &crate::bench::model::make_value(client, key, seq, size)[..]
            );
        }
        let mut expected = String::new();
        let _ = write!(expected, "{}:{}:{}:", 3, 4, 5);
        write_value(&mut out, 3, 5, 4, 0);
        assert_eq!(out, expected);
    }

    proptest::proptest! {
        #[test]
        fn any_request_encodes_like_the_message(
            id in proptest::prelude::any::<u64>(),
            key in "[ -~]{0,40}",
            value in proptest::option::of("[ -~]{0,200}"),
            max_len in 0usize..400,
        ) {
            let op = match &value {
                Some(v) => Op::Set {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value: Bytes::copy_from_slice(v.as_bytes()),
                },
                None => Op::Get { key: Bytes::copy_from_slice(key.as_bytes()) },
            };
            let ours = ours(id, &key, value.as_deref(), max_len);
            let real = real(id, op, max_len);
            proptest::prop_assert_eq!(ours.is_ok(), real.is_ok());
            if let (Ok(a), Ok(b)) = (ours, real) {
                proptest::prop_assert_eq!(a, b);
            }
        }
    }
}
