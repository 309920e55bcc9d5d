//! The writing half of a connection: a task that drains a bounded queue of
//! messages onto a socket, flushing once per batch instead of once per message
//! (many pipelined requests then share one system call), with a write timeout
//! so a peer that stops reading cannot hold the task forever.

use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use semikv_protocol::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

/// Most queue entries written before a flush.
const MAX_BATCH: usize = 256;

/// The writing half of a connection (see `semikv_protocol::codec::split`).
pub type Sink = semikv_protocol::codec::FrameWriter;

/// What to write: one message, with the client's in-flight slot it answers,
/// or frames its sender already encoded.
///
/// A slot is released only once its message has left the queue, so a client
/// connection's queued answers never outnumber its slots: senders that
/// cannot wait (a replica link's reader answering a forwarded read) can rely
/// on `try_send` finding room in a queue of slots + 1.
#[derive(Debug)]
pub enum Out {
    /// One message.
    Message {
        /// The message.
        message: Message,
        /// The in-flight slot it frees, if it answers a client request.
        slot: Option<OwnedSemaphorePermit>,
    },
    /// Whole frames, written as they are: a client's burst of requests for
    /// one replica, or a replica's answers to one client's burst, encoded by
    /// the task that had them.
    Frames {
        /// The frames.
        frames: Bytes,
        /// The in-flight slots they free (merged into one), if they answer
        /// client requests.
        slot: Option<OwnedSemaphorePermit>,
    },
}

impl From<Message> for Out {
    fn from(message: Message) -> Out {
        Out::Message {
            message,
            slot: None,
        }
    }
}

impl Out {
    /// Whether the connection ends once this is written.
    fn is_last(&self) -> bool {
        matches!(
            self,
            Out::Message {
                message: Message::Reject(_),
                ..
            }
        )
    }

    /// Adds this to what `sink` writes at its next flush.
    async fn feed(self, sink: &mut Sink) -> Result<(), semikv_protocol::ProtocolError> {
        match self {
            // The slot goes once the message has left the queue.
            Out::Message { message, slot: _ } => sink.feed(message).await,
            Out::Frames { frames, slot: _ } => {
                sink.write_buffer_mut().extend_from_slice(&frames);
                Ok(())
            }
        }
    }
}

/// Writes everything `rx` yields to `sink` until `rx` closes, `closed` is
/// cancelled, a write fails or takes longer than `write_timeout`, or a
/// [`Message::Reject`] has been written (the connection ends after it).
/// Cancels `closed` when it stops.
pub async fn run(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Out>,
    closed: CancellationToken,
    write_timeout: Duration,
) {
    // One wait for the whole loop, not a waiter registered per batch.
    let cancelled = closed.cancelled();
    tokio::pin!(cancelled);
    loop {
        let first = tokio::select! {
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
            first.feed(&mut sink).await?;
            let mut n = 1;
            while !last && n < MAX_BATCH {
                let Ok(more) = rx.try_recv() else { break };
                last = more.is_last();
                more.feed(&mut sink).await?;
                n += 1;
            }
            SinkExt::<Message>::flush(&mut sink).await?;
            Ok::<bool, semikv_protocol::ProtocolError>(last)
        };
        match tokio::time::timeout(write_timeout, batch).await {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) | Ok(Err(_)) | Err(_) => break,
        }
    }
    closed.cancel();
}
