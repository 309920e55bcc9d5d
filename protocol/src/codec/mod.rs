//! A `tokio_util` codec that turns a byte stream into [`Message`]s and back,
//! one [`crate::frame`] per message, and the framed connections the
//! processes read through it, under a [`ReadBudget`] (see
//! [`crate::budget`]).

use bytes::{Buf, BytesMut};
use std::io::Cursor;

use crate::transport::{ReadHalf, Stream, WriteHalf};
use tokio::io::{AsyncReadExt, Chain};
use tokio_util::codec::{Decoder, Encoder, Framed, FramedRead, FramedWrite};

use crate::budget::{Budgeted, ReadBudget};
use crate::error::ProtocolError;
use crate::frame::{self, Header, DEFAULT_MAX_FRAME_LEN, HEADER_LEN};
use crate::message::Message;

/// Most buffer the decoder reserves ahead of the bytes that arrived for a
/// partial frame: the buffer grows with what a peer actually sends, so a
/// header announcing 16 MiB followed by silence costs 64 KiB, not 16 MiB.
pub const MAX_RESERVE_AHEAD: usize = 64 * 1024;

/// Most capacity a read buffer keeps once the frame it grew for has been
/// decoded: twice a reserve-ahead step, so ordinary traffic never shrinks
/// it and grows it back frame after frame.
pub const MAX_KEPT_CAPACITY: usize = 2 * MAX_RESERVE_AHEAD;

/// Capacity a shrunk buffer starts again with: `tokio_util`'s own initial
/// read buffer size.
const FRESH_CAPACITY: usize = 8 * 1024;

/// Frames [`Message`]s with a payload limit in both directions.
///
/// The decoder reserves buffer only after the header's length has passed
/// the limit check, and at most [`MAX_RESERVE_AHEAD`] beyond the bytes
/// received. After it returns an error the stream is unusable: send the
/// peer [`Message::Reject`] and close.
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
            src.reserve((frame_len - src.len()).min(MAX_RESERVE_AHEAD));
            return Ok(None);
        }
        let result = frame::decode_payload(header, &src[HEADER_LEN..frame_len]);
        // Measured before the frame is skipped: past it, `capacity` no
        // longer counts the bytes the frame took.
        let grown = frame_len > MAX_RESERVE_AHEAD && src.capacity() > MAX_KEPT_CAPACITY;
        src.advance(frame_len);
        if grown && src.len() <= MAX_RESERVE_AHEAD {
            // The buffer grew for a large frame, now decoded (into buffers
            // of its own). Kept, it would hold that memory, resident, for
            // the connection's life after the read budget took its bytes
            // back; what is left of it is small to copy. Small frames leave
            // the buffer alone: pipelined traffic keeps its read size.
            let mut fresh = BytesMut::with_capacity(src.len().max(FRESH_CAPACITY));
            fresh.extend_from_slice(src);
            *src = fresh;
        }
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

/// A connection framed by [`MessageCodec`] whose reads draw on a
/// [`ReadBudget`]: how every process reads what peers send it (the
/// balancer's own links to replicas excepted, see [`split_unbudgeted`]).
pub type BudgetedConn = Framed<Budgeted<Stream>, MessageCodec>;

/// Frames `stream` with payloads up to `max_frame_len`, its reads under
/// `budget`.
pub fn framed(
    stream: impl Into<Stream>,
    max_frame_len: usize,
    budget: &ReadBudget,
) -> BudgetedConn {
    Framed::new(
        Budgeted::new(stream.into(), budget),
        MessageCodec::new(max_frame_len),
    )
}

/// What a split reader reads: the bytes read before the split, then the
/// socket.
type SplitRead = Chain<Cursor<BytesMut>, ReadHalf>;

/// The reading half of a [`BudgetedConn`], still under its budget.
pub type FrameReader = FramedRead<Budgeted<SplitRead>, MessageCodec>;

/// The reading half of a connection read without a budget.
pub type UnbudgetedReader = FramedRead<SplitRead, MessageCodec>;

/// The writing half of a framed connection.
pub type FrameWriter = FramedWrite<WriteHalf, MessageCodec>;

/// Write-buffer bytes a connection keeps between batches: one that grew past
/// this for a large frame (an 8 MiB value) gives the memory back once it is
/// written, so that thousands of quiet connections do not each keep the
/// largest answer they ever sent.
pub const KEEP_WRITE_BUFFER: usize = 512 * 1024;

/// After a flush: replaces `writer`'s buffer with an empty one if it is
/// empty and held more than [`KEEP_WRITE_BUFFER`] bytes at its `peak`
/// during the batch just written. (Its reported capacity cannot tell: a
/// drained buffer reports only what is left past its last write.)
pub fn release_write_buffer(writer: &mut FrameWriter, peak: usize) {
    if peak > KEEP_WRITE_BUFFER && writer.write_buffer().is_empty() {
        *writer.write_buffer_mut() = BytesMut::new();
    }
}

/// Splits a framed connection (typically after its handshake) into halves
/// that share no lock, keeping the bytes already read and not yet written,
/// and the reader's share of the budget: `Framed::split` shares the
/// connection through a lock that both halves take on every poll, which a
/// busy connection pays per message.
pub fn split(framed: BudgetedConn) -> (FrameReader, FrameWriter) {
    let parts = framed.into_parts();
    let leftover = leftover(&parts.read_buf);
    let (read, write) = parts.io.rewound(|stream| {
        let (read, write) = stream.into_split();
        (AsyncReadExt::chain(Cursor::new(leftover), read), write)
    });
    let reader = FramedRead::new(read, parts.codec);
    let mut writer = FramedWrite::new(write, parts.codec);
    *writer.write_buffer_mut() = parts.write_buf;
    (reader, writer)
}

/// [`split`] for a connection read without a budget: the balancer's links
/// to its replicas, which carry answers to the requests the balancer sent
/// (bounded by its requests in flight), and which must not wait behind
/// clients' large frames.
pub fn split_unbudgeted(framed: Framed<Stream, MessageCodec>) -> (UnbudgetedReader, FrameWriter) {
    let parts = framed.into_parts();
    let (read, write) = parts.io.into_split();
    let reader = FramedRead::new(
        AsyncReadExt::chain(Cursor::new(leftover(&parts.read_buf)), read),
        parts.codec,
    );
    let mut writer = FramedWrite::new(write, parts.codec);
    *writer.write_buffer_mut() = parts.write_buf;
    (reader, writer)
}

/// What a framed connection read and did not decode yet, for its split
/// reader. A peer may pipeline messages right behind its handshake. They
/// are read again before the socket: a reader handed them in its buffer
/// would wait for more bytes before decoding what it holds. Copied to
/// their own size: the handshake's buffer may be large (a follower's after
/// snapshot chunks) and would be kept for the connection's life.
fn leftover(read_buf: &BytesMut) -> BytesMut {
    BytesMut::from(&read_buf[..])
}

/// Longest a frame may take to arrive whole, from the moment its first
/// bytes are buffered, by default: a peer that starts a frame and stalls
/// holds the bytes it sent, so it must not hold them for ever.
pub const DEFAULT_FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Watches one connection's read buffer for a frame that started arriving
/// and stalls: [`FrameClock::tick`] wakes twice per limit (one timer per
/// connection, nothing per request), and [`FrameClock::check`] then says
/// whether the unfinished frame in the buffer has waited longer than the
/// limit. An idle connection (nothing buffered) is never stalled, nor is
/// one waiting for the read budget ([`crate::budget`]).
///
/// Times are the ticks' scheduled instants, not the moments the task ran:
/// a frame first seen at one tick is judged exactly `limit` later, two
/// ticks on, so a stalled frame is closed within `limit` plus half of it
/// after its first byte (a real clock read a hair late made that the
/// third tick: up to twice the limit).
#[derive(Debug)]
pub struct FrameClock {
    limit: std::time::Duration,
    ticks: tokio::time::Interval,
    partial_since: Option<tokio::time::Instant>,
    /// The scheduled instant of the last tick.
    now: tokio::time::Instant,
}

impl FrameClock {
    /// A clock for frames that must arrive whole within `limit` of their
    /// first bytes.
    pub fn new(limit: std::time::Duration) -> FrameClock {
        let period = (limit / 2).max(std::time::Duration::from_millis(10));
        let start = tokio::time::Instant::now() + period;
        let mut ticks = tokio::time::interval_at(start, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        FrameClock {
            limit,
            ticks,
            partial_since: None,
            now: tokio::time::Instant::now(),
        }
    }

    /// Waits for the next look at the buffer.
    pub async fn tick(&mut self) {
        self.now = self.ticks.tick().await;
    }

    /// Looks at `reader`'s buffer.
    ///
    /// # Errors
    /// [`ProtocolError::Stalled`] when bytes of an unfinished frame have sat
    /// there since a look at least `limit` before the last tick.
    pub fn check(&mut self, reader: &FrameReader) -> Result<(), ProtocolError> {
        let have = reader.read_buffer().len();
        // A connection stopped by the read budget is not stalling: its time
        // starts once it may read on.
        if have == 0 || reader.get_ref().is_waiting() {
            self.partial_since = None;
            return Ok(());
        }
        let now = self.now;
        let since = *self.partial_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.limit {
            return Err(ProtocolError::Stalled {
                have: have as u64,
                after: self.limit,
            });
        }
        Ok(())
    }

    /// A whole frame arrived: whatever was pending is no longer stalled.
    pub fn frame_arrived(&mut self) {
        self.partial_since = None;
    }
}

#[cfg(test)]
mod tests;
