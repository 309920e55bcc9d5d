//! Guarantee 5 on a replica's port: bad input gets a clear Reject frame and
//! a closed connection, and costs nothing else: a fresh connection is served.

use std::time::Duration;

use semikv_protocol::frame::DEFAULT_MAX_FRAME_LEN;
use semikv_protocol::*;
use semikv_tests::client::{encode, error};
use semikv_tests::hostile::{hand_frame, subscribe};
use semikv_tests::{start_replica, Client, RawConn, Replica};

async fn replica() -> (tempfile::TempDir, Replica) {
    let dir = tempfile::tempdir().unwrap();
    let r = start_replica(1, &dir.path().join("replica-1"), &[] as &[&str])
        .await
        .unwrap();
    (dir, r)
}

/// The replica still answers a well-behaved client.
async fn still_serves(r: &mut Replica) {
    assert!(
        r.proc.is_running(),
        "replica died:\n{}",
        r.proc.stderr_tail()
    );
    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    assert_eq!(c.ping().await.unwrap(), Reply::Pong);
    assert_eq!(c.status().await.unwrap().id, ReplicaId(1));
}

/// Sends `bytes` on a fresh connection and returns every frame until close.
async fn send_and_collect(r: &Replica, hello_first: bool, bytes: &[u8]) -> Vec<Message> {
    let mut conn = RawConn::connect(r.addr).await.unwrap();
    if hello_first {
        conn.handshake(Role::Client).await.unwrap();
    }
    conn.send_bytes(bytes).await.unwrap();
    conn.recv_until_closed().await.unwrap()
}

#[tokio::test]
async fn garbage_bytes_get_a_reject_and_a_close() {
    let (_dir, mut r) = replica().await;
    for hello_first in [false, true] {
        let got = send_and_collect(&r, hello_first, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        // "GET " read as a length is ~1.2 GB: over the limit.
        assert!(
            matches!(
                got.as_slice(),
                [Message::Reject(WireError::FrameTooLarge {
                    len: 0x4745_5420,
                    ..
                })]
            ),
            "hello_first={hello_first}: got {got:?}"
        );
    }
    still_serves(&mut r).await;
}

#[tokio::test]
async fn all_ones_length_is_frame_too_large() {
    let (_dir, mut r) = replica().await;
    for hello_first in [false, true] {
        let got = send_and_collect(&r, hello_first, &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).await;
        assert_eq!(
            got,
            vec![Message::Reject(WireError::FrameTooLarge {
                len: 0xffff_ffff,
                max: DEFAULT_MAX_FRAME_LEN as u64
            })],
            "hello_first={hello_first}"
        );
    }
    still_serves(&mut r).await;
}

#[tokio::test]
async fn bad_checksum_is_rejected() {
    let (_dir, mut r) = replica().await;
    let mut frame = encode(&Message::Hello(Hello::new(Role::Client, None)))
        .unwrap()
        .to_vec();
    let last = frame.len() - 1;
    frame[last] ^= 0x40;
    let got = send_and_collect(&r, false, &frame).await;
    assert_eq!(got, vec![Message::Reject(WireError::ChecksumMismatch)]);

    let mut frame = encode(&Message::Request(Request {
        id: RequestId(1),
        op: Op::Ping,
    }))
    .unwrap()
    .to_vec();
    frame[5] ^= 0x01;
    let got = send_and_collect(&r, true, &frame).await;
    assert_eq!(got, vec![Message::Reject(WireError::ChecksumMismatch)]);
    still_serves(&mut r).await;
}

#[tokio::test]
async fn undecodable_payload_is_rejected() {
    let (_dir, mut r) = replica().await;
    // Variant 200 of Message does not exist.
    for hello_first in [false, true] {
        let got = send_and_collect(&r, hello_first, &hand_frame(&[200, 1, 2, 3]).unwrap()).await;
        assert!(
            matches!(
                got.as_slice(),
                [Message::Reject(WireError::Undecodable { .. })]
            ),
            "hello_first={hello_first}: got {got:?}"
        );
    }
    still_serves(&mut r).await;
}

#[tokio::test]
async fn frame_cut_off_then_eof_closes_without_an_answer() {
    let (_dir, mut r) = replica().await;
    let frame = encode(&Message::Request(Request {
        id: RequestId(1),
        op: Op::Set {
            key: "k".into(),
            value: "v".into(),
        },
    }))
    .unwrap();
    for cut in [3, 8, frame.len() - 1] {
        let mut conn = RawConn::connect(r.addr).await.unwrap();
        conn.handshake(Role::Client).await.unwrap();
        conn.send_bytes(&frame[..cut]).await.unwrap();
        conn.shutdown_write().await.unwrap();
        let got = conn.recv_until_closed().await.unwrap();
        assert!(
            got.iter().all(|m| !matches!(m, Message::Response(_))),
            "cut at {cut}: a truncated request was answered: {got:?}"
        );
    }
    still_serves(&mut r).await;
}

#[tokio::test]
async fn wrong_magic_is_rejected() {
    let (_dir, mut r) = replica().await;
    let mut hello = Hello::new(Role::Client, None);
    hello.magic = 0xdead_beef;
    let got = send_and_collect(&r, false, &encode(&Message::Hello(hello)).unwrap()).await;
    assert_eq!(
        got,
        vec![Message::Reject(WireError::BadMagic { got: 0xdead_beef })]
    );
    still_serves(&mut r).await;
}

#[tokio::test]
async fn wrong_version_is_rejected() {
    let (_dir, mut r) = replica().await;
    let mut hello = Hello::new(Role::Client, None);
    hello.version = PROTOCOL_VERSION + 1;
    let got = send_and_collect(&r, false, &encode(&Message::Hello(hello)).unwrap()).await;
    assert_eq!(
        got,
        vec![Message::Reject(WireError::UnsupportedVersion {
            got: PROTOCOL_VERSION + 1,
            supported: PROTOCOL_VERSION
        })]
    );
    // The error the client library reports names the problem too.
    let mut hello = Hello::new(Role::Client, None);
    hello.version = PROTOCOL_VERSION + 1;
    let err = Client::connect_as(r.addr, hello).await.unwrap_err();
    assert!(format!("{err:#}").contains("version"), "{err:#}");
    still_serves(&mut r).await;
}

#[tokio::test]
async fn request_before_hello_is_rejected() {
    let (_dir, mut r) = replica().await;
    let request = Message::Request(Request {
        id: RequestId(1),
        op: Op::Ping,
    });
    let got = send_and_collect(&r, false, &encode(&request).unwrap()).await;
    assert_eq!(got, vec![Message::Reject(WireError::HandshakeRequired)]);
    still_serves(&mut r).await;
}

#[tokio::test]
async fn admin_ops_from_a_client_connection_are_refused() {
    let (_dir, mut r) = replica().await;
    let ops = [
        Op::Promote(Promote {
            epoch: Epoch::from_raw(1),
            sync_replicas: 0,
            sync_timeout_ms: 1000,
            async_fallback: false,
        }),
        Op::Follow(Follow {
            epoch: Epoch::from_raw(1),
            leader: ReplicaId(2),
            leader_addr: "127.0.0.1:1".to_string(),
        }),
        Op::Fence(Fence {
            epoch: Epoch::from_raw(1),
        }),
    ];
    for op in ops {
        let name = op.name();
        let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
        let id = c.send(op).await.unwrap();
        let mut answers = Vec::new();
        while let Some(m) = c.recv_message(Duration::from_secs(10)).await.unwrap() {
            answers.push(m);
        }
        let named = answers.iter().any(|m| match m {
            Message::Reject(WireError::WrongRole { role, what }) => {
                *role == Role::Client && what.contains(name)
            }
            Message::Response(resp) => {
                resp.id == id
                    && matches!(&resp.reply, Reply::Error(ErrorReply::Invalid { reason }) if reason.contains(name))
            }
            _ => false,
        });
        assert!(named, "{name} from a client: got {answers:?}");
    }
    // Nothing took effect.
    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    let status = c.status().await.unwrap();
    assert_eq!(status.role, NodeRole::Idle);
    assert_eq!(status.epoch, Epoch::from_raw(0));
    still_serves(&mut r).await;
}

#[tokio::test]
async fn unexpected_message_after_the_handshake_is_rejected() {
    let (_dir, mut r) = replica().await;
    let welcome = Message::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        node: None,
    });
    let got = send_and_collect(&r, true, &encode(&welcome).unwrap()).await;
    assert!(
        matches!(
            got.as_slice(),
            [Message::Reject(WireError::Unexpected { .. })]
        ),
        "got {got:?}"
    );
    still_serves(&mut r).await;
}

#[tokio::test]
async fn invalid_keys_are_errors_not_disconnects() {
    let (_dir, mut r) = replica().await;
    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    let empty = c.get(bytes::Bytes::new()).await.unwrap();
    assert!(
        matches!(error(&empty).unwrap(), ErrorReply::Invalid { .. }),
        "{empty:?}"
    );
    let huge_key = vec![b'k'; MAX_KEY_LEN + 1];
    let reply = c.get(huge_key).await.unwrap();
    assert!(
        matches!(error(&reply).unwrap(), ErrorReply::Invalid { .. }),
        "{reply:?}"
    );
    // Same connection still works.
    assert_eq!(c.ping().await.unwrap(), Reply::Pong);
    still_serves(&mut r).await;
}

#[tokio::test]
async fn a_silent_connection_does_not_block_others() {
    let (_dir, mut r) = replica().await;
    let _silent = RawConn::connect(r.addr).await.unwrap();
    let mut half = RawConn::connect(r.addr).await.unwrap();
    // Half a header, then nothing.
    half.send_bytes(&[0, 0]).await.unwrap();
    still_serves(&mut r).await;
}

#[tokio::test]
async fn many_pipelined_requests_are_all_answered_by_id() {
    let (_dir, mut r) = replica().await;
    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    let mut sent = std::collections::BTreeSet::new();
    for i in 0..200u32 {
        let op = if i % 2 == 0 {
            Op::Ping
        } else {
            Op::Get {
                key: format!("k{i}").into(),
            }
        };
        sent.insert(c.send(op).await.unwrap());
    }
    let mut got = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let resp = c.recv().await.unwrap();
        let expected_pong = resp.id.0 % 2 == 1; // ids start at 1
        if expected_pong {
            assert_eq!(resp.reply, Reply::Pong, "id {}", resp.id);
        } else {
            assert_eq!(resp.reply, Reply::Value(None), "id {}", resp.id);
        }
        assert!(got.insert(resp.id), "duplicate response {}", resp.id);
    }
    assert_eq!(got, sent);
    still_serves(&mut r).await;
}

/// The replica id the tests' fake followers claim.
const FAKE_FOLLOWER: ReplicaId = ReplicaId(9);

/// A `Subscribe` from [`FAKE_FOLLOWER`] with an empty log, at `epoch`.
fn subscribe_from_scratch(epoch: u128) -> Message {
    subscribe(Epoch::from_raw(epoch), FAKE_FOLLOWER, LogIndex(0))
}

async fn replica_conn(r: &Replica) -> Client {
    Client::connect_as(r.addr, Hello::new(Role::Replica, Some(FAKE_FOLLOWER)))
        .await
        .unwrap()
}

/// Every message until the peer closes.
async fn until_closed(c: &mut Client) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(m) = c.recv_message(Duration::from_secs(10)).await.unwrap() {
        out.push(m);
    }
    out
}

#[tokio::test]
async fn a_replica_connection_must_subscribe_first() {
    let (_dir, mut r) = replica().await;
    let mut c = replica_conn(&r).await;
    c.send(Op::Ping).await.unwrap();
    let got = until_closed(&mut c).await;
    assert!(
        matches!(
            got.as_slice(),
            [Message::Reject(WireError::Unexpected { .. })]
        ),
        "got {got:?}"
    );
    still_serves(&mut r).await;
}

#[tokio::test]
async fn subscribing_to_a_replica_that_does_not_lead_is_rejected() {
    let (_dir, mut r) = replica().await;
    let mut c = replica_conn(&r).await;
    c.send_message(subscribe_from_scratch(1)).await.unwrap();
    let got = until_closed(&mut c).await;
    assert!(
        matches!(got.as_slice(), [Message::Reject(_)]),
        "got {got:?}"
    );
    still_serves(&mut r).await;
}

#[tokio::test]
async fn subscribing_at_a_stale_epoch_is_rejected() {
    let (_dir, mut r) = replica().await;
    crate::promote_single(r.addr, 2).await.unwrap();
    let mut c = replica_conn(&r).await;
    c.send_message(subscribe_from_scratch(1)).await.unwrap();
    let got = until_closed(&mut c).await;
    assert!(
        matches!(got.as_slice(), [Message::Reject(_)]),
        "got {got:?}"
    );
    still_serves(&mut r).await;
}

/// A follower that acknowledges an index it was never sent must not make
/// a later write at that index count as replicated: an ack can only cover
/// entries the leader has streamed.
#[tokio::test]
async fn an_ack_beyond_what_was_sent_does_not_commit_later_writes() {
    let (_dir, r) = replica().await;
    let mut admin = Client::connect(r.addr, Role::Balancer).await.unwrap();
    semikv_tests::client::node(&admin.fence(1).await.unwrap()).unwrap();
    semikv_tests::client::node(&admin.promote(1, 1, 1000).await.unwrap()).unwrap();

    let mut fake = replica_conn(&r).await;
    fake.send_message(subscribe_from_scratch(1)).await.unwrap();
    let start = fake.recv_message(Duration::from_secs(10)).await.unwrap();
    assert!(
        matches!(start, Some(Message::StreamFrom(_))),
        "got {start:?}"
    );
    fake.send_message(Message::Ack(Ack {
        epoch: Epoch::from_raw(1),
        match_index: LogIndex(1_000_000),
    }))
    .await
    .unwrap();
    // Give the ack a chance to be processed before writing: a leader that
    // takes it (capped or not) shows a non-zero match index; one that ignores
    // it never does, which is fine too, so this wait is not an assertion.
    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    let deadline = semikv_tests::Deadline::new(Duration::from_secs(3), "the bogus ack");
    loop {
        let status = c.status().await.unwrap();
        if let Some(f) = status.followers.first() {
            assert!(
                f.match_index <= status.last_index,
                "leader reports a follower ahead of its own log: {status:?}"
            );
            if f.match_index > LogIndex(0) {
                break;
            }
        }
        if deadline.tick().await.is_err() {
            break;
        }
    }
    // The fake follower never acks again. The write's entry (index 2 at most:
    // a Noop at promotion, then this) was never acknowledged by anyone.
    let reply = c.set("k", "v").await.unwrap();
    assert!(
        matches!(reply, Reply::Error(ErrorReply::NotEnoughReplicas { .. })),
        "a write was acknowledged on the strength of a bogus ack: {reply:?}"
    );
    assert_eq!(c.get("k").await.unwrap(), Reply::Value(None));
}

#[tokio::test]
async fn max_frame_flag_bounds_what_a_replica_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = start_replica(1, &dir.path().join("r1"), &["--max-frame", "1024"])
        .await
        .unwrap();
    let set = Message::Request(Request {
        id: RequestId(1),
        op: Op::Set {
            key: "k".into(),
            value: vec![b'v'; 2000].into(),
        },
    });
    let frame = encode(&set).unwrap();
    let got = send_and_collect(&r, true, &frame).await;
    assert!(
        matches!(
            got.as_slice(),
            [Message::Reject(WireError::FrameTooLarge { max: 1024, len })] if *len as usize == frame.len() - 8
        ),
        "got {got:?}"
    );
    still_serves(&mut r).await;
}

#[tokio::test]
async fn a_value_over_the_limit_is_invalid_and_the_connection_survives() {
    let (_dir, mut r) = replica().await;
    crate::promote_single(r.addr, 1).await.unwrap();
    let mut c = Client::connect(r.addr, Role::Client).await.unwrap();
    let reply = c
        .set("big", vec![0u8; DEFAULT_MAX_VALUE_LEN + 1])
        .await
        .unwrap();
    match error(&reply).unwrap() {
        ErrorReply::Invalid { reason } => assert!(reason.contains("value"), "{reason}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(c.get("big").await.unwrap(), Reply::Value(None));
    // The largest allowed value is fine.
    let reply = c
        .set("big", vec![1u8; DEFAULT_MAX_VALUE_LEN])
        .await
        .unwrap();
    assert!(matches!(reply, Reply::Written { .. }), "{reply:?}");
    still_serves(&mut r).await;
}
