//! Errors of the frame and codec layers.

use std::io;

/// Everything that can go wrong turning bytes into messages or back.
///
/// "Not enough bytes yet" is not an error: decoders return `Ok(None)` for it.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The length header announced more bytes than the configured limit. Nothing
    /// was buffered for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced payload length.
        len: u64,
        /// Configured maximum payload length.
        max: u64,
    },
    /// The payload's crc32 does not match the header.
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    ChecksumMismatch {
        /// Checksum carried in the header.
        expected: u32,
        /// Checksum computed over the payload.
        actual: u32,
    },
    /// The payload passed the checksum but is not a valid message.
    #[error("frame payload does not decode: {reason}")]
    Undecodable {
        /// What the decoder reported.
        reason: String,
    },
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed mid-frame ({have} of {need} bytes received)")]
    Truncated {
        /// Bytes of the frame received.
        have: u64,
        /// Bytes the frame needed.
        need: u64,
    },
    /// A message could not be encoded (e.g. it exceeds the frame limit).
    #[error("message does not encode: {reason}")]
    Unencodable {
        /// Why.
        reason: String,
    },
    /// A frame started arriving but did not complete within the reader's
    /// limit (see [`crate::codec::FrameClock`]): the peer stalled mid-frame.
    #[error("a frame stalled: {have} bytes of it received, none completed it within {after:?}")]
    Stalled {
        /// Bytes of the unfinished frame received.
        have: u64,
        /// The limit.
        after: std::time::Duration,
    },
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl ProtocolError {
    /// The error to send the peer in a [`crate::Message::Reject`] frame before
    /// closing, or `None` when the stream itself is gone.
    pub fn to_wire(&self) -> Option<crate::message::WireError> {
        use crate::message::WireError;
        match self {
            ProtocolError::FrameTooLarge { len, max } => Some(WireError::FrameTooLarge {
                len: *len,
                max: *max,
            }),
            ProtocolError::ChecksumMismatch { .. } => Some(WireError::ChecksumMismatch),
            ProtocolError::Undecodable { reason } => Some(WireError::Undecodable {
                reason: reason.clone(),
            }),
            ProtocolError::Truncated { .. }
            | ProtocolError::Stalled { .. }
            | ProtocolError::Unencodable { .. }
            | ProtocolError::Io(_) => None,
        }
    }
}
