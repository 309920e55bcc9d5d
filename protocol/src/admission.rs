//! How many connections one listener holds open: a fixed number of slots,
//! each held by an accepted connection until it closes. A connection that
//! finds no free slot is told so (a `TooManyConnections` reject frame, or
//! the listener's own words: the RESP door's Redis error line) and closed
//! at once, so a flood of connections costs one descriptor each
//! only for as long as it takes to write that frame, never the descriptors
//! the process needs for its log, snapshots and replication.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
// tokio's clock: the simulated one under a paused runtime.
use tokio::time::Instant;

use crate::frame;
use crate::message::{Message, WireError};
use crate::transport::Stream;

/// Descriptors kept out of every connection limit: the write-ahead log's
/// segments and directory, snapshots being written or sent, the replication
/// stream to a leader, the balancer's links and health checks, stdio.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// The default connection limit: 10,000, or fewer when the descriptor
/// limit leaves less once [`RESERVED_DESCRIPTORS`] are set aside (at least
/// 16 whatever the limit, so a tiny limit still serves someone).
pub fn default_max_connections(descriptor_limit: u64) -> usize {
    let room = descriptor_limit
        .saturating_sub(RESERVED_DESCRIPTORS)
        .max(16);
    usize::try_from(room.min(10_000)).unwrap_or(10_000)
}

/// Least time between two log lines about refused connections: a flood
/// refuses thousands a second, and slots that free up and fill again must
/// not turn each refusal into a line.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A slot held by an admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    reserved: bool,
}

impl Slot {
    /// Whether this is one of the slots kept for peers (balancers and
    /// followers, see [`Admission::with_reserved`]): the connection must
    /// say it is one, quickly, or be refused as if the listener were full.
    pub fn is_reserved(&self) -> bool {
        self.reserved
    }
}

/// How long a connection in a reserved slot has to say its `Hello`: a
/// peer says it at once, and a silent connection must not hold a slot
/// kept for peers for the whole handshake timeout.
pub const RESERVED_HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection limit of one listener.
#[derive(Debug, Clone)]
pub struct Admission {
    slots: Arc<Semaphore>,
    /// Slots only peers (not clients) may keep; taken once `slots` are.
    reserved: Arc<Semaphore>,
    max: usize,
    /// Refusals since the last report.
    refused: Arc<AtomicU64>,
    /// When refusals were last reported.
    reported: Arc<Mutex<Option<Instant>>>,
    /// What a refused connection is told, in its listener's wire format;
    /// `None`: a semikv `Reject(TooManyConnections)` frame.
    refusal: Option<bytes::Bytes>,
}

/// What [`Admission::admit`] decided.
#[derive(Debug)]
pub enum Admitted {
    /// Serve it; hold the slot for as long as the connection lives.
    Yes(Stream, Slot),
    /// Refused: the reject frame was written (if the socket took it) and the
    /// connection closed.
    No {
        /// When a log line is due (at most one per [`REPORT_EVERY`]): the
        /// connections refused since the last one, this one included.
        report: Option<u64>,
    },
}

impl Admission {
    /// A limit of `max` open connections (at least 1), all for anyone.
    pub fn new(max: usize) -> Admission {
        Admission::with_reserved(max, 0)
    }

    /// A limit of `max` open connections (at least 1), of which `reserved`
    /// (at most half) are kept for peers: once the others are taken, a new
    /// connection gets one of those, and the server refuses it after its
    /// `Hello` unless it is a balancer or a replica ([`Slot::is_reserved`]).
    /// A flood of clients then cannot keep a reconnecting follower or a
    /// balancer's link out.
    pub fn with_reserved(max: usize, reserved: usize) -> Admission {
        let max = max.max(1);
        let reserved = reserved.min(max / 2);
        Admission {
            slots: Arc::new(Semaphore::new(max - reserved)),
            reserved: Arc::new(Semaphore::new(reserved)),
            max,
            refused: Arc::new(AtomicU64::new(0)),
            reported: Arc::new(Mutex::new(None)),
            refusal: None,
        }
    }

    /// The same limit, telling refused connections `refusal` (already in
    /// their listener's wire format, e.g. a RESP error line) instead of a
    /// semikv frame.
    pub fn refusing_with(mut self, refusal: bytes::Bytes) -> Admission {
        self.refusal = Some(refusal);
        self
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections admitted and still open.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits() - self.reserved.available_permits()
    }

    /// Admits `stream` if a slot is free; otherwise writes the reject frame
    /// without waiting (a fresh socket's send buffer always takes a few
    /// bytes) and closes it.
    pub fn admit(&self, stream: Stream) -> Admitted {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(Slot {
                _permit: permit,
                reserved: false,
            }),
            Err(_) => self
                .reserved
                .clone()
                .try_acquire_owned()
                .map(|permit| Slot {
                    _permit: permit,
                    reserved: true,
                }),
        };
        match slot {
            Ok(slot) => Admitted::Yes(stream, slot),
            Err(_) => {
                let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                let report = {
                    // Only ever a single store: consistent past any panic.
                    let mut last = crate::sync::lock(&self.reported);
                    let now = Instant::now();
                    if last.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY) {
                        *last = Some(now);
                        self.refused.fetch_sub(refused, Ordering::Relaxed);
                        Some(refused)
                    } else {
                        None
                    }
                };
                if let Some(refusal) = &self.refusal {
                    let _ = stream.try_write(refusal);
                } else {
                    let refusal = Message::Reject(WireError::TooManyConnections {
                        max: u64::try_from(self.max).unwrap_or(u64::MAX),
                    });
                    let mut buf = BytesMut::new();
                    if frame::encode(&refusal, frame::DEFAULT_MAX_FRAME_LEN, &mut buf).is_ok() {
                        let _ = stream.try_write(&buf);
                    }
                }
                Admitted::No { report }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use futures::StreamExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::codec::FramedRead;

    use super::*;
    use crate::MessageCodec;

    #[test]
    fn the_default_leaves_room_for_the_process_itself() {
        assert_eq!(default_max_connections(1_048_576), 10_000);
        assert_eq!(default_max_connections(1024), 1024 - 128);
        assert_eq!(default_max_connections(100), 16);
    }

    #[tokio::test]
    async fn past_the_limit_connections_are_told_and_closed_and_slots_come_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admission = Admission::new(2);
        let mut held = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (stream, _) = listener.accept().await.unwrap();
            match admission.admit(stream.into()) {
                Admitted::Yes(stream, slot) => held.push((stream, slot)),
                Admitted::No { .. } => panic!("refused below the limit"),
            }
        }
        assert_eq!(admission.open(), 2);
        for report in [Some(1), None] {
            let extra = TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            match admission.admit(stream.into()) {
                Admitted::No { report: r } => assert_eq!(r, report, "one line per window"),
                Admitted::Yes(..) => panic!("admitted past the limit"),
            }
            let mut frames = FramedRead::new(extra, MessageCodec::default());
            let told = frames.next().await.unwrap().unwrap();
            assert_eq!(
                told,
                Message::Reject(WireError::TooManyConnections { max: 2 })
            );
            assert!(frames.next().await.is_none(), "closed after the frame");
        }
        held.pop();
        let _again = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        assert!(matches!(admission.admit(stream.into()), Admitted::Yes(..)));
    }

    #[tokio::test]
    async fn a_listener_of_another_wire_format_tells_refusals_in_its_own() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admission = Admission::new(1).refusing_with(bytes::Bytes::from_static(
            b"-ERR max number of clients reached\r\n",
        ));
        let _first = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let _held = match admission.admit(stream.into()) {
            Admitted::Yes(stream, slot) => (stream, slot),
            Admitted::No { .. } => panic!("refused below the limit"),
        };
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        assert!(matches!(
            admission.admit(stream.into()),
            Admitted::No { .. }
        ));
        let mut told = Vec::new();
        extra.read_to_end(&mut told).await.unwrap();
        assert_eq!(told, b"-ERR max number of clients reached\r\n");
    }

    #[tokio::test]
    async fn reserved_slots_come_last_and_are_marked() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admission = Admission::with_reserved(4, 2);
        let mut held = Vec::new();
        let mut clients = Vec::new();
        for expect_reserved in [false, false, true, true] {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (stream, _) = listener.accept().await.unwrap();
            match admission.admit(stream.into()) {
                Admitted::Yes(stream, slot) => {
                    assert_eq!(slot.is_reserved(), expect_reserved);
                    held.push((stream, slot));
                }
                Admitted::No { .. } => panic!("refused below the limit"),
            }
        }
        assert_eq!(admission.open(), 4);
        clients.push(TcpStream::connect(addr).await.unwrap());
        let (stream, _) = listener.accept().await.unwrap();
        assert!(matches!(
            admission.admit(stream.into()),
            Admitted::No { .. }
        ));
        // At most half are reserved, whatever is asked.
        assert_eq!(
            Admission::with_reserved(4, 10).reserved.available_permits(),
            2
        );
    }
}
