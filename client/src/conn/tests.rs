//! The connection's tests, against a fake server.

use super::*;
use crate::testing::FakeServer;
use semikv_protocol::ErrorReply;

fn fast() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

#[tokio::test]
async fn set_get_delete_against_fake_server() {
    let server = FakeServer::start().await;
    let client = Client::connect(&server.addr(), &fast()).await.unwrap();
    assert_eq!(client.peer_node(), Some(ReplicaId(7)));
    client.ping().await.unwrap();
    assert_eq!(client.get("k").await.unwrap(), None);
    let i1 = client.set("k", "v").await.unwrap();
    assert_eq!(client.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    let i2 = client.delete("k").await.unwrap();
    assert!(i2 > i1);
    assert_eq!(client.get("k").await.unwrap(), None);
}

#[tokio::test]
async fn many_requests_in_flight_from_many_tasks() {
    let server = FakeServer::start().await;
    let client = Client::connect(&server.addr(), &fast()).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8u32 {
        let client = client.clone();
        tasks.spawn(async move {
            for i in 0..50u32 {
                let key = format!("k{t}-{i}");
                client.set(key.clone(), format!("v{i}")).await.unwrap();
                let got = client.get(key).await.unwrap();
                assert_eq!(got.as_deref(), Some(format!("v{i}").as_bytes()));
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    assert_eq!(client.inner.pending.len(), 0);
}

#[tokio::test]
async fn out_of_order_responses_are_matched_by_id() {
    let server = FakeServer::start().await;
    let client = Client::connect(&server.addr(), &fast()).await.unwrap();
    client.set("fast", "1").await.unwrap();
    // The fake delays answers to keys starting with "slow".
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.get("slow").await })
    };
    // Wait until the slow request is registered before racing it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.inner.pending.is_empty() {
        assert!(Instant::now() < deadline, "slow request never registered");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        client.get("fast").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(slow.await.unwrap().unwrap(), None);
}

#[tokio::test]
async fn error_replies_are_typed() {
    let server = FakeServer::start().await;
    let client = Client::connect(&server.addr(), &fast()).await.unwrap();
    let err = client.set("readonly", "x").await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::Server(ErrorReply::NotLeader { .. })
    ));
}

#[tokio::test]
async fn server_closing_fails_in_flight_and_later_requests() {
    let server = FakeServer::start().await;
    let client = Client::connect(&server.addr(), &fast()).await.unwrap();
    // The fake drops the connection on this key without answering.
    let err = client.get("hangup").await.unwrap_err();
    assert!(matches!(err, ClientError::ConnectionLost { .. }), "{err:?}");
    assert!(!err.is_unsent());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client.is_closed() {
        assert!(Instant::now() < deadline, "close never noticed");
        tokio::task::yield_now().await;
    }
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, ClientError::NotConnected { .. }), "{err:?}");
    assert!(err.is_unsent());
}

#[tokio::test]
async fn request_times_out() {
    let server = FakeServer::start().await;
    let config = ClientConfig {
        request_timeout: Duration::from_millis(200),
        ..fast()
    };
    let client = Client::connect(&server.addr(), &config).await.unwrap();
    let err = client.get("never").await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert_eq!(client.inner.pending.len(), 0);
    // The connection itself is still fine.
    client.ping().await.unwrap();
}

#[tokio::test]
async fn rejected_handshake_is_reported() {
    let server = FakeServer::start_rejecting().await;
    let err = Client::connect(&server.addr(), &fast()).await.unwrap_err();
    assert!(matches!(err, ClientError::Rejected { .. }), "{err:?}");
}

#[tokio::test]
async fn connect_refused_is_reported() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = Client::connect(&addr, &fast()).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn oversized_request_is_refused_before_sending() {
    let server = FakeServer::start().await;
    let config = ClientConfig {
        max_frame_len: 1024,
        ..fast()
    };
    let client = Client::connect(&server.addr(), &config).await.unwrap();
    let err = client.set("k", vec![0u8; 4096]).await.unwrap_err();
    assert!(matches!(err, ClientError::Encode(_)), "{err:?}");
    client.ping().await.unwrap();
}
