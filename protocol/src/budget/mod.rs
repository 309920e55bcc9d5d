//! The process-wide budget for buffered input (issue #16): the bytes of
//! frames that connections have started to receive and not yet handed
//! over, counted across all connections of a process so that many peers
//! each half-way through a large frame cannot add up to gigabytes.
//!
//! # The rule
//!
//! - Every connection may buffer up to [`SMALL_FRAME`] bytes of its next
//!   frame on its own, outside the budget. A frame no longer than that
//!   (header included: every ordinary request, ack and handshake) is read
//!   without touching the budget.
//! - A longer frame takes its whole length less [`SMALL_FRAME`] from the
//!   [`ReadBudget`] in one piece, once its header has arrived and before any
//!   more of it is read. The grant goes back as soon as the frame's last
//!   byte is read (the decoder hands the frame over in the same poll) or
//!   when the connection drops.
//! - While the budget cannot cover a frame, its connection stops reading its
//!   socket: the peer's sends block on TCP's window. Nothing errs and
//!   nothing is buffered; the connection reads on once bytes come back.
//!
//! So what all connections buffer is at most the budget plus
//! [`SMALL_FRAME`] per connection, and the connection limit
//! ([`crate::admission`]) bounds the second term.
//!
//! # Why it cannot deadlock
//!
//! - A connection waits for the budget only while it holds none of it: its
//!   grant goes with the frame it was for, and a grant smaller than the
//!   next frame needs is given back before waiting. Nobody holds budget
//!   while waiting for budget.
//! - A connection that holds a grant waits for nothing but its peer's
//!   bytes. The frame completes, the peer closes, or the frame timeout
//!   ([`crate::codec::FrameClock`], counted from the grant) closes the
//!   connection: every grant comes back within a bounded time.
//! - The budget is a fair (first come, first served) semaphore, and no
//!   grant asked for exceeds the whole budget (the processes never set it
//!   below their frame limit), so every waiter is served in turn.
//!
//! Taking a frame's bytes a little at a time as they arrive, the obvious
//! alternative, does deadlock: a few honest clients each half-way through
//! an 8 MiB value can exhaust the budget together, then all wait for more,
//! and each is closed by its frame timeout with its value unread.
//!
//! # Availability
//!
//! Peers that announce large frames and stall can take the whole budget,
//! each holding its share for at most the frame timeout; since a grant is
//! taken when the header arrives, that costs them a header per frame, not
//! the frame's bytes (the price of never deadlocking). Meanwhile large
//! frames of other connections wait their turn, in order; small frames,
//! and so almost every request, are read as before, since they need no
//! budget. A connection's frame timeout does not run while it waits for
//! the budget: that stall is the process's, not the peer's. A connection
//! that reads one frame at a time by construction (a follower's stream
//! from its leader) is better off under a budget of its own, one frame:
//! it then never waits behind anyone.
//!
//! The wrapper relies on one property of `tokio_util`'s framed readers: the
//! inner reader is read only after the decoder has said the buffer holds no
//! whole frame. What a connection has buffered at each read is therefore
//! exactly the part of its current frame that [`Budgeted`] has seen pass.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

// tokio's clock: the simulated one under a paused runtime, std's otherwise.
use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, Take};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

use crate::frame::HEADER_LEN;

/// Bytes of one frame every connection may buffer without the budget: a
/// frame up to this long, header included, is read as if there were no
/// budget. The same as the codec's reserve-ahead step
/// ([`crate::codec::MAX_RESERVE_AHEAD`]), which a connection costs anyway.
pub const SMALL_FRAME: usize = 64 * 1024;

/// Default budget of the balancer and of a replica: 512 MiB, room for 32
/// frames of the default 16 MiB limit arriving at once.
pub const DEFAULT_READ_BUDGET: usize = 512 * 1024 * 1024;

/// Least time between two log lines saying the budget ran out.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The budget counts in units of this many bytes: a semaphore takes at most
/// `u32::MAX` permits at once, and a frame may be up to 4 GiB long.
const UNIT: usize = 1024;

/// Bytes of buffered input a process may hold beyond each connection's
/// [`SMALL_FRAME`], shared by all its connections (clone it to share).
#[derive(Debug, Clone)]
pub struct ReadBudget {
    units: Arc<Semaphore>,
    /// Units in all, taken or not.
    capacity: usize,
    /// When running out was last logged.
    reported: Arc<Mutex<Option<Instant>>>,
}

impl ReadBudget {
    /// A budget of `bytes` (rounded down to whole KiB, at least one).
    pub fn new(bytes: usize) -> ReadBudget {
        let capacity = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        ReadBudget {
            units: Arc::new(Semaphore::new(capacity)),
            capacity,
            reported: Arc::new(Mutex::new(None)),
        }
    }

    /// A budget of `bytes`, raised to `max_frame_len` if it is lower, with
    /// a warning that says so: every frame the codec accepts must fit in
    /// the budget alone, or its connection could never read it.
    pub fn covering(bytes: usize, max_frame_len: usize) -> ReadBudget {
        if bytes < max_frame_len {
            tracing::warn!(
                asked = bytes,
                max_frame = max_frame_len,
                "read budget below the frame limit; raised to the frame limit so that any one frame fits"
            );
        }
        ReadBudget::new(bytes.max(max_frame_len))
    }

    /// The budget's size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity.saturating_mul(UNIT)
    }

    /// Bytes not granted to any connection now.
    pub fn available(&self) -> usize {
        self.units.available_permits().saturating_mul(UNIT)
    }

    /// What a message of `len` bytes needs beyond [`SMALL_FRAME`], for a
    /// reader that follows its own framing (the RESP door, which learns a
    /// bulk string's length from its header): waits its turn, fairly, when
    /// the budget cannot cover it now, and holds the bytes until the grant
    /// drops. `None` when `len` needs nothing. Under the same rule as
    /// [`Budgeted`]: the caller holds no other grant while it waits, and
    /// gives this one back once the message is read or the connection
    /// ends.
    pub async fn grant(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let units = self.units_for(len as u64);
        if units == 0 {
            return None;
        }
        if let Ok(grant) = self.units.clone().try_acquire_many_owned(units) {
            return Some(grant);
        }
        self.report_exhausted(units as usize * UNIT);
        // Never closed: the budget owns the only handle that could close it.
        self.units.clone().acquire_many_owned(units).await.ok()
    }

    /// Units to grant a frame of `frame_len` bytes (header included): what
    /// it needs beyond [`SMALL_FRAME`], rounded up, at most the whole budget.
    fn units_for(&self, frame_len: u64) -> u32 {
        let beyond = frame_len.saturating_sub(SMALL_FRAME as u64);
        let units = beyond.div_ceil(UNIT as u64);
        let cap = u64::try_from(self.capacity).unwrap_or(u64::MAX);
        u32::try_from(units.min(cap)).unwrap_or(u32::MAX)
    }

    /// Logs that a connection has to wait, at most once per
    /// [`REPORT_EVERY`]: an operator sees a budget that is too small (or
    /// being drained by stalling peers) without a line per connection.
    fn report_exhausted(&self, want: usize) {
        // Only ever a single store: consistent past any panic.
        let mut last = crate::sync::lock(&self.reported);
        let now = Instant::now();
        if last.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY) {
            *last = Some(now);
            tracing::warn!(
                budget = self.capacity(),
                available = self.available(),
                want,
                "read budget exhausted; connections with large frames stop reading until bytes come back"
            );
        }
    }
}

impl Default for ReadBudget {
    fn default() -> Self {
        ReadBudget::new(DEFAULT_READ_BUDGET)
    }
}

/// How far the bytes read so far reach into the current frame: the wrapper
/// follows frame boundaries itself, from the length in each header.
#[derive(Debug, Default, Clone, Copy)]
struct FrameProgress {
    /// Bytes of the current frame seen so far.
    seen: u64,
    /// The start of its length field while fewer than 4 bytes are seen.
    len_bytes: [u8; 4],
}

impl FrameProgress {
    /// The current frame's length, header included, once its length field
    /// has been seen.
    fn frame_len(&self) -> Option<u64> {
        (self.seen >= 4).then(|| HEADER_LEN as u64 + u64::from(u32::from_be_bytes(self.len_bytes)))
    }

    /// Follows `bytes` (read right after what came before); whether they
    /// finished at least one frame.
    fn observe(&mut self, mut bytes: &[u8]) -> bool {
        let mut finished = false;
        while !bytes.is_empty() {
            let Some(frame_len) = self.frame_len() else {
                // Below 4: an index into the length field.
                let at = self.seen as usize;
                let take = (4 - at).min(bytes.len());
                self.len_bytes[at..at + take].copy_from_slice(&bytes[..take]);
                self.seen += take as u64;
                bytes = &bytes[take..];
                continue;
            };
            let left = frame_len - self.seen;
            let take = usize::try_from(left).map_or(bytes.len(), |l| l.min(bytes.len()));
            self.seen += take as u64;
            bytes = &bytes[take..];
            if self.seen == frame_len {
                *self = FrameProgress::default();
                finished = true;
            }
        }
        finished
    }
}

/// A connection whose reads draw on a [`ReadBudget`] (see the module doc
/// for the rule); writes pass straight through.
///
/// Made for a `tokio_util` `Framed`/`FramedRead` over [`crate::MessageCodec`]
/// whose stream starts at a frame boundary.
#[derive(Debug)]
pub struct Budgeted<S> {
    inner: Take<S>,
    budget: ReadBudget,
    acquire: PollSemaphore,
    /// Units granted to the frame in progress.
    grant: Option<OwnedSemaphorePermit>,
    progress: FrameProgress,
    /// Whether the last read stopped for the budget.
    waiting: bool,
}

impl<S: AsyncRead> Budgeted<S> {
    /// `inner`, read under `budget`, starting at a frame boundary.
    pub fn new(inner: S, budget: &ReadBudget) -> Budgeted<S> {
        Budgeted {
            inner: inner.take(0),
            budget: budget.clone(),
            acquire: PollSemaphore::new(budget.units.clone()),
            grant: None,
            progress: FrameProgress::default(),
            waiting: false,
        }
    }

    /// Whether the connection is stopped until the budget can cover its
    /// frame: it is not the peer that stalls.
    pub fn is_waiting(&self) -> bool {
        self.waiting
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The same budget and grant around the reader `f` makes of the inner
    /// connection (`f` may keep another part of it, such as a write half).
    /// That reader must yield again the bytes read since the last whole
    /// frame (what a framed reader still buffers), then what follows: they
    /// are followed again from that frame boundary, and the grant covers
    /// them as it covered them before.
    pub(crate) fn rewound<T: AsyncRead, X>(self, f: impl FnOnce(S) -> (T, X)) -> (Budgeted<T>, X) {
        let (inner, rest) = f(self.inner.into_inner());
        let rewound = Budgeted {
            inner: inner.take(0),
            budget: self.budget,
            acquire: self.acquire,
            grant: self.grant,
            progress: FrameProgress::default(),
            waiting: false,
        };
        (rewound, rest)
    }

    /// Bytes held from the budget now.
    fn granted(&self) -> u64 {
        self.grant
            .as_ref()
            .map_or(0, |g| (g.num_permits() * UNIT) as u64)
    }
}

/// The error of a frame that no grant can cover: only a budget smaller than
/// the frame limit allows one, and the processes never set one up.
fn beyond_budget(frame_len: u64, budget: &ReadBudget) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "a frame of {frame_len} bytes does not fit in the read budget of {} bytes",
            budget.capacity()
        ),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let seen = this.progress.seen;
        // How far into the current frame this read may go.
        let reach = match this.progress.frame_len() {
            Some(frame_len) if frame_len > SMALL_FRAME as u64 => {
                let units = this.budget.units_for(frame_len);
                if this.grant.as_ref().map_or(0, |g| g.num_permits()) < units as usize {
                    // Never wait while holding a part.
                    this.grant = None;
                    match this.acquire.poll_acquire_many(cx, units) {
                        Poll::Pending => {
                            if !this.waiting {
                                this.waiting = true;
                                this.budget.report_exhausted(units as usize * UNIT);
                            }
                            return Poll::Pending;
                        }
                        // Never closed: the budget owns the only handle that could.
                        Poll::Ready(None) => {
                            return Poll::Ready(Err(io::Error::other("read budget closed")))
                        }
                        Poll::Ready(Some(grant)) => {
                            this.waiting = false;
                            this.grant = Some(grant);
                        }
                    }
                }
                frame_len.min(SMALL_FRAME as u64 + this.granted())
            }
            // The length field, or a small frame: within the floor.
            _ => SMALL_FRAME as u64,
        };
        let Some(room) = reach.checked_sub(seen).filter(|&r| r > 0) else {
            let frame_len = this.progress.frame_len().unwrap_or(reach);
            return Poll::Ready(Err(beyond_budget(frame_len, &this.budget)));
        };
        this.inner.set_limit(room);
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.progress.observe(&buf.filled()[before..]) {
            // The read ended the granted frame (a granted read stops at its
            // end): the decoder takes it out of the buffer in this same
            // poll.
            this.grant = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().inner.get_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().inner.get_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.get_ref().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner.get_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner.get_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
