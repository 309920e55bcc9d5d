//! The writing half of a multiplexed semikv connection (the balancer's links
//! and its semikv door, the client library's connections): a task that
//! drains a bounded queue of messages onto a socket, flushing once per batch instead of once per message
//! (many pipelined requests then share one system call), with a write timeout
//! so a peer that stops reading cannot hold the task forever.

use std::time::Duration;

use crate::{frame, Message, ProtocolError};
use bytes::Bytes;
use futures::SinkExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most queue entries written before a flush.
const MAX_BATCH: usize = 256;

/// Bytes encoded into the socket's buffer after which a batch is flushed
/// before it takes more: what a peer that reads slowly leaves buffered is
/// this plus one entry, not a whole batch of large values.
pub const MAX_UNFLUSHED: usize = 256 * 1024;

/// The writing half of a connection (see `semikv_protocol::codec::split`).
pub type Sink = crate::codec::FrameWriter;

/// One entry of an outbox's queue.
pub trait Outgoing: Send + 'static {
    /// Whether the connection ends once this is written.
    fn is_last(&self) -> bool;

    /// Encodes this into what `sink` writes at its next flush; anything it
    /// holds (a client's in-flight slot) is released once it returns, i.e.
    /// once it has left the queue.
    ///
    /// # Errors
    /// A message that cannot be encoded (longer than a frame): the
    /// connection ends.
    fn write_into(self, sink: &mut Sink) -> Result<(), ProtocolError>;
}

/// Encodes `message` into what `sink` writes at its next flush.
///
/// # Errors
/// The message is longer than the sink's frame limit.
pub fn encode(message: &Message, sink: &mut Sink) -> Result<(), ProtocolError> {
    let max = sink.encoder().max_frame_len();
    frame::encode(message, max, sink.write_buffer_mut())
}

/// What a replica link writes: one message, or frames its sender already
/// encoded (a client's burst of reads for one replica).
#[derive(Debug)]
pub enum Outbound {
    /// One message.
    Message(Message),
    /// Whole frames, written as they are.
    Frames(Bytes),
}

impl From<Message> for Outbound {
    fn from(message: Message) -> Outbound {
        Outbound::Message(message)
    }
}

impl Outgoing for Outbound {
    fn is_last(&self) -> bool {
        matches!(self, Outbound::Message(Message::Reject(_)))
    }

    fn write_into(self, sink: &mut Sink) -> Result<(), ProtocolError> {
        match self {
            Outbound::Message(message) => encode(&message, sink),
            Outbound::Frames(frames) => {
                sink.write_buffer_mut().extend_from_slice(&frames);
                Ok(())
            }
        }
    }
}

/// Writes everything `rx` yields to `sink` until `rx` closes, `closed` is
/// cancelled, a write fails or takes longer than `write_timeout`, or an
/// entry that [`Outgoing::is_last`] has been written.
/// Cancels `closed` when it stops.
///
/// # Errors
/// Why writing stopped, when a write failed or blocked (not when the queue
/// closed, `closed` was cancelled or a last entry was written).
pub async fn run<T: Outgoing>(
    mut sink: Sink,
    mut rx: mpsc::Receiver<T>,
    closed: CancellationToken,
    write_timeout: Duration,
) -> Result<(), WriteFailed> {
    let ended = write_all(&mut sink, &mut rx, &closed, write_timeout).await;
    closed.cancel();
    ended
}

/// Why an outbox stopped writing.
#[derive(Debug, thiserror::Error)]
pub enum WriteFailed {
    /// Encoding or writing failed.
    #[error("write failed: {0}")]
    Failed(#[from] ProtocolError),
    /// The peer read nothing for the whole write timeout.
    #[error("write blocked for {0:?}")]
    Blocked(Duration),
}

async fn write_all<T: Outgoing>(
    sink: &mut Sink,
    rx: &mut mpsc::Receiver<T>,
    closed: &CancellationToken,
    write_timeout: Duration,
) -> Result<(), WriteFailed> {
    // One wait for the whole loop, not a waiter registered per batch.
    let cancelled = closed.cancelled();
    tokio::pin!(cancelled);
    loop {
        let first = tokio::select! {
            // A cancelled connection writes nothing more, however much is
            // queued (a client cut off at its output limit, say).
            biased;
            _ = &mut cancelled => break,
            msg = rx.recv() => msg,
        };
        let Some(first) = first else { break };
        // Let the tasks that are ready right now (e.g. every request answered
        // by one read from a replica) queue their messages before we write:
        // without this the outbox woke per message and made one `writev`
        // each, which was over half the balancer's CPU under load.
        tokio::task::yield_now().await;
        let batch = async {
            let mut last = first.is_last();
            first.write_into(sink)?;
            let mut peak = sink.write_buffer().len();
            let mut n = 1;
            while !last && n < MAX_BATCH {
                if sink.write_buffer().len() >= MAX_UNFLUSHED {
                    // Checked here only (a lock per call): the select around
                    // the batch catches a cancellation at every await.
                    if closed.is_cancelled() {
                        break;
                    }
                    SinkExt::<Message>::flush(sink).await?;
                }
                let Ok(more) = rx.try_recv() else { break };
                last = more.is_last();
                more.write_into(sink)?;
                peak = peak.max(sink.write_buffer().len());
                n += 1;
            }
            SinkExt::<Message>::flush(sink).await?;
            crate::codec::release_write_buffer(sink, peak);
            Ok::<bool, ProtocolError>(last)
        };
        // A cancelled connection stops even while a write is stuck on a
        // peer that does not read: it would otherwise hold the queue (and
        // everything queued in it) for the whole write timeout.
        let outcome = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            outcome = tokio::time::timeout(write_timeout, batch) => outcome,
        };
        match outcome {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => break,
            Ok(Err(e)) => return Err(WriteFailed::Failed(e)),
            Err(_) => return Err(WriteFailed::Blocked(write_timeout)),
        }
    }
    Ok(())
}

/// A request written as it is (the client library's queue entries).
impl Outgoing for crate::Request {
    fn is_last(&self) -> bool {
        false
    }

    fn write_into(self, sink: &mut Sink) -> Result<(), ProtocolError> {
        encode(&Message::Request(self), sink)
    }
}
