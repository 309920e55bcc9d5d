//! The frame: one postcard-encoded value behind a length and a checksum.
//!
//! ```text
//! +-------------+---------------+----------------------+
//! | len: u32 BE | crc32: u32 BE | payload: len bytes   |
//! +-------------+---------------+----------------------+
//! ```
//!
//! `crc32` is IEEE (crc32fast) over the payload. The network codec and the
//! write-ahead log both use this layout, so one function reads and writes it.
//! The length is checked against the limit before any byte of the payload is
//! buffered: a hostile header cannot make us allocate.

use bytes::{BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::ProtocolError;

/// Bytes before the payload: length and checksum.
pub const HEADER_LEN: usize = 8;

/// Default largest payload accepted or produced: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The parsed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length in bytes.
    pub len: u32,
    /// crc32 of the payload.
    pub crc: u32,
}

impl Header {
    /// Reads a header from the first [`HEADER_LEN`] bytes of `buf`, or `None`
    /// if `buf` is shorter.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let len = u32::from_be_bytes(buf.get(0..4)?.try_into().ok()?);
        let crc = u32::from_be_bytes(buf.get(4..8)?.try_into().ok()?);
        Some(Header { len, crc })
    }

    /// Header plus payload length.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }
}

/// A postcard output that appends straight into a `BytesMut`, so encoding a
/// frame costs no intermediate allocation.
struct BytesMutFlavor<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for BytesMutFlavor<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends `value` as one frame to `dst`.
///
/// # Errors
/// [`ProtocolError::Unencodable`] if postcard cannot encode the value or the
/// payload is longer than `max_len`; `dst` is then left as it was.
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
    max_len: usize,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let start = dst.len();
    dst.put_bytes(0, HEADER_LEN);
    if let Err(e) = postcard::serialize_with_flavor(value, BytesMutFlavor(dst)) {
        dst.truncate(start);
        return Err(ProtocolError::Unencodable {
            reason: e.to_string(),
        });
    }
    let payload_len = dst.len() - start - HEADER_LEN;
    if payload_len > max_len || payload_len > u32::MAX as usize {
        dst.truncate(start);
        return Err(ProtocolError::Unencodable {
            reason: format!("payload of {payload_len} bytes exceeds the limit of {max_len} bytes"),
        });
    }
    let crc = crc32fast::hash(&dst[start + HEADER_LEN..]);
    dst[start..start + 4].copy_from_slice(&(payload_len as u32).to_be_bytes());
    dst[start + 4..start + HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// Decodes the frame at the start of `buf`.
///
/// Returns `Ok(None)` if `buf` holds only part of a frame (not an error), or
/// the value and the number of bytes the frame took.
///
/// # Errors
/// [`ProtocolError::FrameTooLarge`] as soon as the header announces more than
/// `max_len`; [`ProtocolError::ChecksumMismatch`];
/// [`ProtocolError::Undecodable`] if the payload is not exactly one `T`.
pub fn decode_slice<T: DeserializeOwned>(
    buf: &[u8],
    max_len: usize,
) -> Result<Option<(T, usize)>, ProtocolError> {
    let Some(header) = Header::parse(buf) else {
        return Ok(None);
    };
    check_len(header, max_len)?;
    let Some(payload) = buf.get(HEADER_LEN..header.frame_len()) else {
        return Ok(None);
    };
    let value = decode_payload(header, payload)?;
    Ok(Some((value, header.frame_len())))
}

/// Rejects a header whose length is over `max_len`.
///
/// # Errors
/// [`ProtocolError::FrameTooLarge`].
pub fn check_len(header: Header, max_len: usize) -> Result<(), ProtocolError> {
    if header.len as usize > max_len {
        return Err(ProtocolError::FrameTooLarge {
            len: u64::from(header.len),
            max: max_len as u64,
        });
    }
    Ok(())
}

/// Verifies `payload` against `header` and decodes it as exactly one `T`.
///
/// # Errors
/// [`ProtocolError::ChecksumMismatch`] or [`ProtocolError::Undecodable`]
/// (including trailing bytes after the value).
pub fn decode_payload<T: DeserializeOwned>(
    header: Header,
    payload: &[u8],
) -> Result<T, ProtocolError> {
    let actual = crc32fast::hash(payload);
    if actual != header.crc {
        return Err(ProtocolError::ChecksumMismatch {
            expected: header.crc,
            actual,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|e| ProtocolError::Undecodable {
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(ProtocolError::Undecodable {
            reason: format!("{} trailing bytes after the message", rest.len()),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_value() {
        let mut buf = BytesMut::new();
        encode(&(7u32, "seven".to_string()), 1024, &mut buf).unwrap();
        let (v, used) = decode_slice::<(u32, String)>(&buf, 1024).unwrap().unwrap();
        assert_eq!(v, (7, "seven".to_string()));
        assert_eq!(used, buf.len());
    }

    #[test]
    fn partial_frame_is_not_an_error() {
        let mut buf = BytesMut::new();
        encode(&"hello".to_string(), 1024, &mut buf).unwrap();
        for cut in 0..buf.len() {
            assert!(decode_slice::<String>(&buf[..cut], 1024).unwrap().is_none());
        }
    }

    #[test]
    fn oversized_header_is_rejected_before_the_payload_arrives() {
        let buf = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        let err = decode_slice::<String>(&buf, DEFAULT_MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge {
                len: 0xffff_ffff,
                ..
            }
        ));
    }

    #[test]
    fn flipped_payload_bit_is_a_checksum_mismatch() {
        let mut buf = BytesMut::new();
        encode(&"hello".to_string(), 1024, &mut buf).unwrap();
        let last = buf.len() - 1;
        buf[last] ^= 0x01;
        let err = decode_slice::<String>(&buf, 1024).unwrap_err();
        assert!(matches!(err, ProtocolError::ChecksumMismatch { .. }));
    }

    #[test]
    fn trailing_bytes_are_undecodable() {
        let payload = [1u8, 2, 3];
        let header = Header {
            len: 3,
            crc: crc32fast::hash(&payload),
        };
        let err = decode_payload::<u8>(header, &payload).unwrap_err();
        assert!(matches!(err, ProtocolError::Undecodable { .. }));
    }

    #[test]
    fn encode_refuses_values_over_the_limit() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let err = encode(&vec![0u8; 100], 10, &mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::Unencodable { .. }));
        assert_eq!(&buf[..], b"keep");
    }
}
