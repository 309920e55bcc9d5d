//! A `tokio_util` codec that turns a byte stream into [`Message`]s and back,
//! one [`crate::frame`] per message, and the framed connections the
//! processes read through it, under a [`ReadBudget`] (see
//! [`crate::budget`]).

use bytes::{Buf, BytesMut};
use std::io::Cursor;

use tokio::io::{AsyncReadExt, Chain};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
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
pub type BudgetedConn = Framed<Budgeted<TcpStream>, MessageCodec>;

/// Frames `stream` with payloads up to `max_frame_len`, its reads under
/// `budget`.
pub fn framed(stream: TcpStream, max_frame_len: usize, budget: &ReadBudget) -> BudgetedConn {
    Framed::new(
        Budgeted::new(stream, budget),
        MessageCodec::new(max_frame_len),
    )
}

/// What a split reader reads: the bytes read before the split, then the
/// socket.
type SplitRead = Chain<Cursor<BytesMut>, OwnedReadHalf>;

/// The reading half of a [`BudgetedConn`], still under its budget.
pub type FrameReader = FramedRead<Budgeted<SplitRead>, MessageCodec>;

/// The reading half of a connection read without a budget.
pub type UnbudgetedReader = FramedRead<SplitRead, MessageCodec>;

/// The writing half of a framed connection.
pub type FrameWriter = FramedWrite<OwnedWriteHalf, MessageCodec>;

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
pub fn split_unbudgeted(
    framed: Framed<TcpStream, MessageCodec>,
) -> (UnbudgetedReader, FrameWriter) {
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
mod tests {
    use super::*;
    use crate::message::{Hello, Role};

    /// A writer that sent a large frame gives its buffer back, and keeps
    /// writing as before; one that only sent small frames keeps its own.
    #[tokio::test]
    async fn a_write_buffer_grown_for_a_large_frame_is_given_back() {
        use crate::message::{Reply, Response};
        use crate::RequestId;
        use futures::{SinkExt, StreamExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_, mut writer) = split_unbudgeted(Framed::new(client, MessageCodec::default()));
        let mut reader = FramedRead::new(server, MessageCodec::default());
        let value = |len: usize| {
            Message::Response(Response {
                id: RequestId(1),
                reply: Reply::Value(Some(bytes::Bytes::from(vec![7u8; len]))),
            })
        };
        let reading = tokio::spawn(async move {
            for _ in 0..3 {
                reader.next().await.unwrap().unwrap();
            }
        });
        writer.feed(value(2 << 20)).await.unwrap();
        let peak = writer.write_buffer().len();
        SinkExt::<Message>::flush(&mut writer).await.unwrap();
        release_write_buffer(&mut writer, peak);
        assert_eq!(writer.write_buffer().capacity(), 0);
        writer.feed(value(100)).await.unwrap();
        let small = writer.write_buffer().len();
        SinkExt::<Message>::flush(&mut writer).await.unwrap();
        let kept = writer.write_buffer().capacity();
        release_write_buffer(&mut writer, small);
        assert_eq!(writer.write_buffer().capacity(), kept);
        writer.send(value(10)).await.unwrap();
        reading.await.unwrap();
    }

    #[tokio::test]
    async fn split_halves_keep_what_was_read_behind_the_handshake() {
        use futures::{SinkExt, StreamExt};
        use tokio::io::AsyncWriteExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // The handshake and two messages behind it arrive in one write, and
        // nothing follows: the split reader must yield them from what the
        // handshake's read already took in.
        let mut bytes = BytesMut::new();
        let mut codec = MessageCodec::default();
        let hello = Message::Hello(Hello::new(Role::Client, None));
        let ping = Message::Hello(Hello::new(Role::Balancer, None));
        for m in [&hello, &ping, &ping] {
            codec.encode(m, &mut bytes).unwrap();
        }
        client.write_all(&bytes).await.unwrap();
        let mut framed = framed(server, DEFAULT_MAX_FRAME_LEN, &ReadBudget::default());
        let first = framed.next().await.unwrap().unwrap();
        assert_eq!(first, hello);
        assert!(
            !framed.read_buffer().is_empty(),
            "the test needs bytes left"
        );
        let (mut reader, mut writer) = split(framed);
        let wait = std::time::Duration::from_secs(10);
        for _ in 0..2 {
            let next = tokio::time::timeout(wait, reader.next()).await;
            assert_eq!(next.unwrap().unwrap().unwrap(), ping);
        }
        // And the halves still work both ways.
        writer.send(hello.clone()).await.unwrap();
        let mut back = Framed::new(client, MessageCodec::default());
        assert_eq!(back.next().await.unwrap().unwrap(), hello);
        back.send(ping.clone()).await.unwrap();
        assert_eq!(reader.next().await.unwrap().unwrap(), ping);
    }

    /// A connection accepted on a fresh listener, framed under `budget`,
    /// and the peer's socket.
    async fn budgeted_pair(budget: &ReadBudget) -> (BudgetedConn, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (framed(server, DEFAULT_MAX_FRAME_LEN, budget), client)
    }

    /// A message whose frame is about `len` bytes, and that frame.
    fn frame_of(len: usize) -> (Message, BytesMut) {
        let message = Message::Reject(crate::message::WireError::Undecodable {
            reason: "x".repeat(len.saturating_sub(16)),
        });
        let mut buf = BytesMut::new();
        MessageCodec::default().encode(&message, &mut buf).unwrap();
        (message, buf)
    }

    #[tokio::test]
    async fn split_keeps_the_grant_of_a_frame_the_handshake_started() {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let mib = 1024 * 1024;
        let budget = ReadBudget::new(mib);
        let (mut framed, mut client) = budgeted_pair(&budget).await;
        let hello = Message::Hello(Hello::new(Role::Client, None));
        let (big, frame) = frame_of(900 * 1024);
        let mut bytes = BytesMut::new();
        MessageCodec::default().encode(&hello, &mut bytes).unwrap();
        bytes.extend_from_slice(&frame[..frame.len() / 2]);
        client.write_all(&bytes).await.unwrap();
        assert_eq!(framed.next().await.unwrap().unwrap(), hello);
        // Read on until the large frame's grant is taken (it cannot
        // finish: the rest is not sent yet).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while budget.available() == mib {
            assert!(tokio::time::Instant::now() < deadline, "never granted");
            let next =
                tokio::time::timeout(std::time::Duration::from_millis(20), framed.next()).await;
            assert!(next.is_err(), "{next:?}");
        }
        let held = mib - budget.available();
        let (mut reader, _writer) = split(framed);
        assert_eq!(mib - budget.available(), held, "the grant moved along");
        client.write_all(&frame[frame.len() / 2..]).await.unwrap();
        assert_eq!(reader.next().await.unwrap().unwrap(), big);
        assert_eq!(budget.available(), mib);
    }

    #[test]
    fn a_buffer_grown_for_a_large_frame_is_given_back_once_it_is_decoded() {
        let mut codec = MessageCodec::default();
        let (big, frame) = frame_of(1024 * 1024);
        let (small, small_frame) = frame_of(100);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame);
        buf.extend_from_slice(&small_frame[..10]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(big));
        assert!(
            buf.capacity() <= MAX_KEPT_CAPACITY,
            "kept {} bytes of buffer",
            buf.capacity()
        );
        // What followed the frame is still there.
        buf.extend_from_slice(&small_frame[10..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(small.clone()));
        // Small frames leave the buffer as it is, however large.
        let mut buf = BytesMut::with_capacity(4 * MAX_KEPT_CAPACITY);
        for _ in 0..3 {
            buf.extend_from_slice(&small_frame);
        }
        let before = buf.capacity();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(small));
        assert_eq!(buf.capacity() + small_frame.len(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_waiting_for_the_budget_is_not_stalled() {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let budget = ReadBudget::new(1024 * 1024);
        let (_, frame) = frame_of(900 * 1024);
        let limit = std::time::Duration::from_secs(30);
        let wait = std::time::Duration::from_millis(50);
        // One connection takes most of the budget for a frame it never ends.
        let (holder, mut holder_peer) = budgeted_pair(&budget).await;
        let (mut holder, _w) = split(holder);
        holder_peer.write_all(&frame[..1000]).await.unwrap();
        while budget.available() == 1024 * 1024 {
            assert!(tokio::time::timeout(wait, holder.next()).await.is_err());
        }
        // The next one must wait for it, for as long as it takes.
        let (waiter, mut waiter_peer) = budgeted_pair(&budget).await;
        let (mut waiter, _w) = split(waiter);
        waiter_peer.write_all(&frame[..1000]).await.unwrap();
        while !waiter.get_ref().is_waiting() {
            assert!(tokio::time::timeout(wait, waiter.next()).await.is_err());
        }
        let mut clock = FrameClock::new(limit);
        for _ in 0..20 {
            clock.tick().await;
            clock.check(&waiter).unwrap();
        }
        // Once it may read, its peer's stall counts.
        drop(holder);
        assert!(tokio::time::timeout(wait, waiter.next()).await.is_err());
        assert!(!waiter.get_ref().is_waiting());
        let stalled = loop {
            clock.tick().await;
            if let Err(e) = clock.check(&waiter) {
                break e;
            }
        };
        assert!(
            matches!(stalled, ProtocolError::Stalled { .. }),
            "{stalled}"
        );
    }

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
    fn a_partial_frame_reserves_only_a_bounded_step_ahead() {
        let mut codec = MessageCodec::default();
        // A header announcing 15 MiB, and one byte of it.
        let len = 15 * 1024 * 1024u32;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&[0, 0, 0, 0, 0]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= HEADER_LEN + 1 + 2 * MAX_RESERVE_AHEAD,
            "reserved {} bytes for 9 received",
            buf.capacity()
        );
        // A whole frame still decodes when it arrives in pieces.
        let mut whole = BytesMut::new();
        let big = Message::Reject(crate::message::WireError::Undecodable {
            reason: "x".repeat(300 * 1024),
        });
        codec.encode(&big, &mut whole).unwrap();
        let mut fed = BytesMut::new();
        let mut out = None;
        for piece in whole.chunks(7 * 1024) {
            fed.extend_from_slice(piece);
            if let Some(m) = codec.decode(&mut fed).unwrap() {
                out = Some(m);
            }
        }
        assert_eq!(out, Some(big));
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_stalls_is_given_up_on_and_an_idle_connection_is_not() {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut reader, _writer) = split(framed(
            server,
            DEFAULT_MAX_FRAME_LEN,
            &ReadBudget::default(),
        ));
        let limit = std::time::Duration::from_secs(30);
        let mut clock = FrameClock::new(limit);
        // Idle for ten limits: never stalled.
        for _ in 0..20 {
            clock.tick().await;
            clock.check(&reader).unwrap();
        }
        // A header announcing 1000 bytes, then 10 of them, then silence: the
        // reader takes them in, and within 1.5 limits the clock gives up.
        let mut partial = 1000u32.to_be_bytes().to_vec();
        partial.extend_from_slice(&[0; 14]);
        client.write_all(&partial).await.unwrap();
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(50), reader.next()).await;
        assert!(pending.is_err(), "a partial frame decoded: {pending:?}");
        let started = tokio::time::Instant::now();
        let stalled = loop {
            clock.tick().await;
            if let Err(e) = clock.check(&reader) {
                break e;
            }
        };
        assert!(
            matches!(stalled, ProtocolError::Stalled { have: 18, .. }),
            "{stalled}"
        );
        assert!(started.elapsed() <= limit * 3 / 2 + std::time::Duration::from_millis(100));
        // A frame that arrives resets it.
        clock.frame_arrived();
        assert!(clock.partial_since.is_none());
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
