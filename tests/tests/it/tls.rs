//! TLS on every listener and link (issue #17): a cluster whose replicas and
//! balancer all serve TLS with certificates of one CA, replicas streaming
//! to each other and the balancer reaching them over TLS; plain peers and
//! strangers refused; certificates rotated under load.

use nix::sys::signal::Signal;
use semikv_protocol::tls::testing::TestCa;
use semikv_protocol::{Hello, Role};
use semikv_tests::client::Dial;
use semikv_tests::{Client, Cluster, Deadline};

use crate::CONVERGE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_and_link_speaks_tls_through_a_failover() {
    // The restarted replica catches up from the new leader over TLS.
    let mut cluster = Cluster::with_tls(3, &[], &[]).await.unwrap();
    crate::fails_over_keeping_writes(&mut cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_peers_strangers_and_uncertified_roles_are_refused() {
    let cluster = Cluster::with_tls(3, &[], &[]).await.unwrap();
    cluster.wait_steady(CONVERGE).await.unwrap();
    let balancer = cluster.balancer_addr();
    let replica = cluster.replica(0).addr;

    // Plain TCP on a TLS port: told so in a frame it can read.
    for addr in [balancer, replica] {
        let refused = Client::connect(addr, Role::Client).await.unwrap_err();
        assert!(format!("{refused:#}").contains("speaks TLS"), "{refused:#}");
    }

    // A client that trusts another CA does not get in.
    let dir = tempfile::tempdir().unwrap();
    let other = TestCa::new(dir.path(), "other").unwrap();
    let stranger = Dial {
        tls: Some(std::sync::Arc::new(
            semikv_protocol::tls::client_config(&other.ca_file, None).unwrap(),
        )),
        ..Dial::default()
    };
    let refused = Client::dial(balancer, Hello::new(Role::Client, None), &stranger)
        .await
        .unwrap_err();
    assert!(format!("{refused:#}").contains("TLS"), "{refused:#}");

    // Trusting the CA but without a certificate of its own: a client of the
    // balancer is fine, the balancer role at a replica is not.
    let ca = &cluster.tls_ca().unwrap().ca_file;
    let anonymous = Dial {
        tls: Some(std::sync::Arc::new(
            semikv_protocol::tls::client_config(ca, None).unwrap(),
        )),
        ..Dial::default()
    };
    let mut client = Client::dial(balancer, Hello::new(Role::Client, None), &anonymous)
        .await
        .unwrap();
    client.ping().await.unwrap();
    let refused = Client::dial(replica, Hello::new(Role::Balancer, None), &anonymous)
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("needs a TLS client certificate"),
        "{refused:#}"
    );
}

/// Runs `semikv-bench` over TLS against `cluster`'s balancer for `secs`
/// seconds; its JSON report.
fn bench_over_tls(cluster: &Cluster, secs: u32) -> std::process::Child {
    let ca = cluster.tls_ca().unwrap().ca_file.clone();
    std::process::Command::new(semikv_tests::bin::bench().unwrap())
        .args(["--addr", &cluster.balancer_addr().to_string()])
        .args(["--clients", "4", "--pipeline", "4", "--value-size", "64"])
        .args(["--duration", &secs.to_string(), "--json", "--no-progress"])
        .arg("--tls-ca")
        .arg(&ca)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let mut cluster = Cluster::with_tls(3, &[], &[]).await.unwrap();
    cluster.wait_steady(CONVERGE).await.unwrap();
    let bench = bench_over_tls(&cluster, 6);
    let reloaded = |cluster: &Cluster| -> usize {
        let mut n = cluster
            .balancer()
            .unwrap()
            .proc
            .count_logged("TLS certificates reloaded")
            .unwrap();
        for i in 0..cluster.len() {
            n += cluster
                .replica(i)
                .proc
                .count_logged("TLS certificates reloaded")
                .unwrap();
        }
        n
    };
    for round in 1..=2 {
        cluster.reissue_certificates().unwrap();
        cluster
            .balancer_mut()
            .unwrap()
            .proc
            .signal(Signal::SIGHUP)
            .unwrap();
        for i in 0..cluster.len() {
            cluster.replica_mut(i).proc.signal(Signal::SIGHUP).unwrap();
        }
        let deadline = Deadline::new(CONVERGE, "every process to reload");
        while reloaded(&cluster) < 4 * round {
            deadline.tick().await.unwrap();
        }
        // New connections take the new certificates.
        let mut c = cluster.connect_balancer().await.unwrap();
        c.ping().await.unwrap();
    }
    // A broken certificate is refused on reload; the old one stays.
    let cert = cluster.dir().join("balancer.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let balancer = cluster.balancer_mut().unwrap();
    balancer.proc.signal(Signal::SIGHUP).unwrap();
    let deadline = Deadline::new(CONVERGE, "the bad certificate to be refused");
    while balancer
        .proc
        .count_logged("TLS certificates not reloaded")
        .unwrap()
        == 0
    {
        deadline.tick().await.unwrap();
    }
    let mut c = cluster.connect_balancer().await.unwrap();
    c.ping().await.unwrap();

    let out = tokio::task::spawn_blocking(move || bench.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    let failed = json["failed"].as_u64().unwrap_or(u64::MAX);
    let kinds = json["errors"].as_object().map_or(usize::MAX, |e| e.len());
    let ops = json["ops_per_sec"].as_f64().unwrap_or(0.0);
    eprintln!("tls rotation: {ops:.0} ops/s, {failed} failed");
    assert_eq!((failed, kinds), (0, 0), "{report}");
    assert!(ops > 0.0, "{report}");
}

/// Sends `request` over `stream` and reads the answer to its end (the
/// request asks the server to close).
async fn exchange<S>(mut stream: S, request: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        // A TLS peer may end without close_notify once it has answered.
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    tokio::time::timeout(std::time::Duration::from_secs(15), io)
        .await
        .expect("an HTTP answer in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listeners_speak_https_and_tell_plain_clients_so() {
    let http = ["--http", "127.0.0.1:0"];
    let cluster = Cluster::with_tls(3, &http, &http).await.unwrap();
    cluster.wait_steady(CONVERGE).await.unwrap();
    let door = cluster.balancer().and_then(|b| b.http).unwrap();
    let replica = cluster.replica(0).http.unwrap();
    let ca = &cluster.tls_ca().unwrap().ca_file;
    let config = std::sync::Arc::new(semikv_protocol::tls::client_config(ca, None).unwrap());
    let https = |addr: std::net::SocketAddr| {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            semikv_protocol::tls::connect_client(&config, tcp, &addr.to_string())
                .await
                .unwrap()
        }
    };

    // Plain HTTP on an HTTPS port: a 400 it can read, whole, nothing served.
    for addr in [door, replica] {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let answer = exchange(tcp, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(body.contains("https://"), "{answer}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{answer}"
        );
    }

    // Over TLS, the door writes and reads, the replica serves its metrics.
    let put =
        "PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nv1";
    let answer = exchange(https(door).await, put).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let get =
        "GET /v1/kv/k?consistency=linearizable HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = exchange(https(door).await, get).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""value":"v1""#), "{answer}");
    // Two scrapes on one connection, as Prometheus keeps it alive.
    let scrapes = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n\
                   GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = exchange(https(replica).await, scrapes).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    assert_eq!(
        answer.matches("# TYPE semikv_replica_commit_index").count(),
        2,
        "{answer}"
    );
}
