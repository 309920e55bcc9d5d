//! Bad input and stalled clients: each costs its own connection only.

use crate::support::*;

/// Reads from a raw socket until EOF; returns the bytes (bounded by time).
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    timeout(T, stream.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

fn decode_all(bytes: &[u8]) -> Vec<Message> {
    use tokio_util::codec::Decoder;
    let mut codec = MessageCodec::default();
    let mut buf = bytes::BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Ok(Some(m)) = codec.decode(&mut buf) {
        out.push(m);
    }
    out
}

#[tokio::test]
async fn bad_input_is_rejected_and_closed_while_others_keep_working() {
    let a = Fake::start(1, NodeRole::Idle, 0, 0).await;
    let lb = Balancer::start(config(&[&a])).await;
    until("a leads", || is_leader_at(&a, 1)).await;
    let mut good = Client::connect(lb.addr).await;
    set_until_written(&mut good, "k", "v").await;

    // Garbage bytes instead of a frame: bad checksum.
    let mut raw = TcpStream::connect(lb.addr).await.unwrap();
    raw.write_all(b"\x00\x00\x00\x05garbage-garbage")
        .await
        .unwrap();
    let got = decode_all(&read_to_close(&mut raw).await);
    assert!(matches!(got.as_slice(), [Message::Reject(_)]), "{got:?}");

    // A half-open connection that never finishes its frame does not stall
    // the good client.
    let mut stuck = TcpStream::connect(lb.addr).await.unwrap();
    stuck.write_all(b"\x00\x00\x00\x10").await.unwrap();
    assert!(matches!(good.get("k").await, Reply::Value(Some(_))));

    // Wrong magic.
    let mut bad = Framed::new(
        TcpStream::connect(lb.addr).await.unwrap(),
        MessageCodec::default(),
    );
    let mut hello = Hello::new(Role::Client, None);
    hello.magic = 0xdead_beef;
    bad.send(Message::Hello(hello)).await.unwrap();
    match timeout(T, bad.next()).await.unwrap() {
        Some(Ok(Message::Reject(WireError::BadMagic { got: 0xdead_beef }))) => {}
        other => panic!("expected BadMagic: {other:?}"),
    }
    assert!(
        timeout(T, bad.next()).await.unwrap().is_none(),
        "closed after reject"
    );

    // Oversized frame after a good handshake.
    let mut big = Client::connect(lb.addr).await;
    let inner = big.framed.get_mut();
    inner
        .write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])
        .await
        .unwrap();
    match timeout(T, big.framed.next()).await.unwrap() {
        Some(Ok(Message::Reject(WireError::FrameTooLarge { .. }))) => {}
        other => panic!("expected FrameTooLarge: {other:?}"),
    }
    assert!(timeout(T, big.framed.next()).await.unwrap().is_none());

    // A request before the handshake.
    let mut early = Framed::new(
        TcpStream::connect(lb.addr).await.unwrap(),
        MessageCodec::default(),
    );
    early
        .send(Message::Request(Request {
            id: RequestId(1),
            op: Op::Ping,
        }))
        .await
        .unwrap();
    match timeout(T, early.next()).await.unwrap() {
        Some(Ok(Message::Reject(WireError::HandshakeRequired))) => {}
        other => panic!("expected HandshakeRequired: {other:?}"),
    }

    // Admin ops from a client.
    let mut admin = Client::connect(lb.addr).await;
    admin
        .send(Op::Fence(semikv_protocol::Fence {
            epoch: Epoch::from_raw(99),
        }))
        .await;
    match timeout(T, admin.framed.next()).await.unwrap() {
        Some(Ok(Message::Reject(WireError::WrongRole { .. }))) => {}
        other => panic!("expected WrongRole: {other:?}"),
    }
    assert_eq!(a.s().epoch.term(), 1, "the fence never reached the replica");

    // Invalid request: a clear error, the connection stays.
    assert!(matches!(
        good.get("").await,
        Reply::Error(ErrorReply::Invalid { .. })
    ));
    assert!(matches!(good.get("k").await, Reply::Value(Some(_))));
    drop(stuck);
    lb.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_mid_frame_is_closed_and_others_are_served() {
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    let mut cfg = config(&[&a]);
    cfg.frame_timeout = Duration::from_millis(300);
    let lb = Balancer::start(cfg).await;
    let mut other = Client::connect(lb.addr).await;
    let stream = TcpStream::connect(lb.addr).await.unwrap();
    let mut framed = Framed::new(stream, MessageCodec::default());
    framed
        .send(Message::Hello(Hello::new(Role::Client, None)))
        .await
        .unwrap();
    assert!(matches!(framed.next().await, Some(Ok(Message::Welcome(_)))));
    let mut raw = framed.into_inner();
    // A header announcing 1000 bytes and 10 of them, then nothing.
    let mut partial = 1000u32.to_be_bytes().to_vec();
    partial.extend_from_slice(&[0; 14]);
    raw.write_all(&partial).await.unwrap();
    let mut rest = Vec::new();
    let closed = timeout(T, raw.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "a stalled frame kept its connection: {closed:?}"
    );
    assert_eq!(other.call(Op::Ping).await, Reply::Pong);
    lb.stop().await;
}
