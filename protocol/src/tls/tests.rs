//! TLS between two ends on loopback: verified both ways, plain peers told,
//! strangers refused, material reloaded or kept.

use super::testing::TestCa;
use super::*;
use crate::{MessageCodec, WireError};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WITHIN: Duration = Duration::from_secs(10);

async fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

/// Accepts one connection with `server` and echoes one line back.
fn serve_one(
    listener: TcpListener,
    server: Arc<Tls>,
) -> tokio::task::JoinHandle<Result<bool, String>> {
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut stream = server.accept(tcp.into(), WITHIN).await?;
        let verified = peer_verified(&stream);
        let mut buf = [0u8; 5];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(&buf).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        Ok(verified)
    })
}

#[tokio::test]
async fn both_ends_verify_each_other_and_talk() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster").unwrap();
    let server = Arc::new(Tls::load(ca.issue(dir.path(), "replica").unwrap()).unwrap());
    let client = Tls::load(ca.issue(dir.path(), "balancer").unwrap()).unwrap();
    let (listener, addr) = listener().await;
    let served = serve_one(listener, server);
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let mut stream = client.connect(tcp.into(), &addr).await.unwrap();
    assert!(stream.is_tls());
    stream.write_all(b"hello").await.unwrap();
    let mut echo = [0u8; 5];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"hello");
    assert_eq!(
        served.await.unwrap(),
        Ok(true),
        "the client's certificate was verified"
    );
}

#[tokio::test]
async fn a_plain_peer_on_a_tls_port_is_told_in_a_frame_it_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster").unwrap();
    let server = Arc::new(Tls::load(ca.issue(dir.path(), "replica").unwrap()).unwrap());
    let (listener, addr) = listener().await;
    let served = serve_one(listener, server);
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let mut framed = tokio_util::codec::Framed::new(tcp, MessageCodec::default());
    use futures::SinkExt;
    framed
        .send(Message::Hello(crate::Hello::new(crate::Role::Client, None)))
        .await
        .unwrap();
    let answer = tokio::time::timeout(WITHIN, framed.next()).await.unwrap();
    assert!(
        matches!(answer, Some(Ok(Message::Reject(WireError::TlsRequired)))),
        "{answer:?}"
    );
    let err = served.await.unwrap().unwrap_err();
    assert!(err.contains("plain-TCP"), "{err}");
}

#[tokio::test]
async fn a_peer_of_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ours = TestCa::new(dir.path(), "ours").unwrap();
    let theirs = TestCa::new(dir.path(), "theirs").unwrap();
    let server = Arc::new(Tls::load(ours.issue(dir.path(), "replica").unwrap()).unwrap());
    let stranger = Tls::load(theirs.issue(dir.path(), "stranger").unwrap()).unwrap();
    let (listener, addr) = listener().await;
    let served = serve_one(listener, server);
    let tcp = TcpStream::connect(&addr).await.unwrap();
    // It does not trust our certificate: no session.
    assert!(stranger.connect(tcp.into(), &addr).await.is_err());
    assert!(served.await.unwrap().is_err());
}

#[tokio::test]
async fn a_reload_takes_new_files_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster").unwrap();
    let files = ca.issue(dir.path(), "replica").unwrap();
    let tls = Tls::load(files.clone()).unwrap();
    // Rotated: a new certificate under the same names.
    ca.issue(dir.path(), "replica").unwrap();
    tls.reload().unwrap();
    // Broken: the old material stays in use.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    let err = tls.reload().unwrap_err().to_string();
    assert!(err.contains("replica.pem"), "{err}");
    let (listener, addr) = listener().await;
    let client = Tls::load(ca.issue(dir.path(), "client").unwrap()).unwrap();
    let served = serve_one(listener, Arc::new(tls));
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let mut stream = client.connect(tcp.into(), &addr).await.unwrap();
    stream.write_all(b"still").await.unwrap();
    let mut echo = [0u8; 5];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(served.await.unwrap(), Ok(true));
}

#[test]
fn missing_or_wrong_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster").unwrap();
    let mut files = ca.issue(dir.path(), "replica").unwrap();
    files.key = dir.path().join("absent.key");
    let err = Tls::load(files.clone()).unwrap_err().to_string();
    assert!(err.contains("absent.key"), "{err}");
    let other = ca.issue(dir.path(), "other").unwrap();
    files.key = other.key;
    let err = Tls::load(files).unwrap_err().to_string();
    assert!(
        err.contains("replica.pem") && err.contains("other.key"),
        "{err}"
    );
}
