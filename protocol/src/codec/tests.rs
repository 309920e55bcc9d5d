//! The codec's tests: frames in and out, split halves, stalled frames,
//! buffers given back.

use super::*;
use crate::message::{Hello, Role};
use tokio::net::TcpStream;

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
    let (_, mut writer) = split_unbudgeted(Framed::new(client.into(), MessageCodec::default()));
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
        let next = tokio::time::timeout(std::time::Duration::from_millis(20), framed.next()).await;
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
    let pending = tokio::time::timeout(std::time::Duration::from_millis(50), reader.next()).await;
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
