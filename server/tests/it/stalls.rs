//! A client that starts a request frame and stalls holds the bytes it sent
//! only until the frame timeout: then its connection is closed, while an
//! idle connection (between frames) stays open as long as it likes.

use std::time::Duration;

use crate::support::{Server, WAIT};
use futures::{SinkExt, StreamExt};
use semikv_protocol::{Hello, Message, MessageCodec, Role};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

async fn handshaken(addr: std::net::SocketAddr) -> Framed<TcpStream, MessageCodec> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut conn = Framed::new(stream, MessageCodec::default());
    conn.send(Message::Hello(Hello::new(Role::Client, None)))
        .await
        .unwrap();
    assert!(matches!(conn.next().await, Some(Ok(Message::Welcome(_)))));
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_frame_closes_its_connection_and_idleness_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_millis(300);
    let server = Server::start_with(1, &dir.path().join("r1"), None, |c| {
        c.frame_timeout = limit;
    })
    .await;
    let mut idle = handshaken(server.addr).await;
    let stalled = handshaken(server.addr).await;
    let mut raw = stalled.into_inner();
    // A header announcing 1000 bytes and 10 of them, then nothing.
    let mut partial = 1000u32.to_be_bytes().to_vec();
    partial.extend_from_slice(&[0; 14]);
    raw.write_all(&partial).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut rest),
    )
    .await
    .expect("a stalled frame kept its connection open");
    assert!(closed.is_ok(), "{closed:?}");
    // The idle connection, quiet for longer than the limit, still works.
    let ping = Message::Request(semikv_protocol::Request {
        id: semikv_protocol::RequestId(1),
        op: semikv_protocol::Op::Ping,
    });
    idle.send(ping).await.unwrap();
    let answer = tokio::time::timeout(WAIT, idle.next()).await.unwrap();
    assert!(
        matches!(answer, Some(Ok(Message::Response(_)))),
        "{answer:?}"
    );
    drop(idle);
    server.stop().await.unwrap();
}
