//! The writing half of a connection: a task that drains a bounded queue of
//! messages onto a socket, flushing once per batch instead of once per message
//! (many pipelined requests then share one system call), with a write timeout
//! so a peer that stops reading cannot hold the task forever.

use std::time::Duration;

use futures::stream::SplitSink;
use futures::SinkExt;
use semikv_protocol::{Message, MessageCodec};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Most messages written before a flush.
const MAX_BATCH: usize = 256;

/// The sink half of a framed connection.
pub type Sink = SplitSink<Framed<TcpStream, MessageCodec>, Message>;

/// One message to write, with the client's in-flight slot it answers.
///
/// The slot is released only once the message is handed to the socket, so a
/// client connection's queued answers never outnumber its slots: senders
/// that cannot wait (a replica link's reader answering a forwarded read)
/// can rely on `try_send` finding room in a queue of slots + 1.
#[derive(Debug)]
pub struct Out {
    /// The message.
    pub message: Message,
    /// The in-flight slot it frees, if it answers a client request.
    pub slot: Option<OwnedSemaphorePermit>,
}

impl From<Message> for Out {
    fn from(message: Message) -> Out {
        Out {
            message,
            slot: None,
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
            let mut last = matches!(first.message, Message::Reject(_));
            sink.feed(first.message).await?;
            let mut n = 1;
            while !last && n < MAX_BATCH {
                let Ok(more) = rx.try_recv() else { break };
                last = matches!(more.message, Message::Reject(_));
                sink.feed(more.message).await?;
                n += 1;
            }
            sink.flush().await?;
            Ok::<bool, semikv_protocol::ProtocolError>(last)
        };
        match tokio::time::timeout(write_timeout, batch).await {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) | Ok(Err(_)) | Err(_) => break,
        }
    }
    closed.cancel();
}
