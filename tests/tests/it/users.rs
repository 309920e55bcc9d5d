//! Client users (issue #17): a balancer started with `--users-file` lets in
//! only users who log in with their password, holds back an address that
//! keeps failing, checks every request against the user's role, and reads
//! the file again on SIGHUP: a removed user is refused from its next
//! request on an already open connection.

use nix::sys::signal::Signal;
use semikv_lb::users::{line_for, UserRole, MAX_FAILURES};
use semikv_protocol::{ErrorReply, Reply, Role};
use semikv_tests::client::{error, value};
use semikv_tests::{Client, Cluster, Deadline};

use crate::CONVERGE;

/// The users file: alice writes, bob reads, root is admin.
fn users_file(dir: &std::path::Path, with_alice: bool) -> std::path::PathBuf {
    let path = dir.join("users");
    let mut lines = vec![
        "# test users".to_string(),
        line_for("bob", UserRole::Read, "bob-pw").unwrap(),
        line_for("root", UserRole::Admin, "root-pw").unwrap(),
    ];
    if with_alice {
        lines.push(line_for("alice", UserRole::Write, "alice-pw").unwrap());
    }
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// Three replicas and a balancer with the users in `file`; the fixture
/// logs in as root.
async fn with_users(file: &std::path::Path) -> Cluster {
    let mut cluster = Cluster::with_balancer(3, &[], &["--users-file", file.to_str().unwrap()])
        .await
        .unwrap();
    cluster.log_in_as("root", "root-pw");
    let r = cluster.wait_steady(CONVERGE).await;
    cluster.explain(r).unwrap();
    cluster
}

fn refusal(result: anyhow::Result<Client>) -> String {
    format!("{:#}", result.expect_err("the login was refused"))
}

async fn sighup_and_wait(cluster: &mut Cluster, says: &str) {
    let balancer = cluster.balancer_mut().unwrap();
    let before = balancer.proc.count_logged(says).unwrap();
    balancer.proc.signal(Signal::SIGHUP).unwrap();
    let deadline = Deadline::new(CONVERGE, says);
    while balancer.proc.count_logged(says).unwrap() == before {
        deadline.tick().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_users_get_in_and_each_does_what_its_role_allows() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path(), true);
    let mut cluster = with_users(&file).await;
    let addr = cluster.balancer_addr();

    // No credentials, or wrong ones: refused at the handshake.
    let anonymous = refusal(Client::connect(addr, Role::Client).await);
    assert!(anonymous.contains("requires a user"), "{anonymous}");
    let wrong = refusal(Client::login(addr, "alice", "nope").await);
    assert!(wrong.contains("wrong user name or password"), "{wrong}");
    let nobody = refusal(Client::login(addr, "mallory", "alice-pw").await);
    assert!(nobody.contains("wrong user name or password"), "{nobody}");

    // alice writes, bob only reads, root does both.
    let mut alice = Client::login(addr, "alice", "alice-pw").await.unwrap();
    let r = alice.set_until_acked("k", "v", CONVERGE).await;
    cluster.explain(r).unwrap();
    let r = cluster.wait_steady(CONVERGE).await;
    cluster.explain(r).unwrap();
    let mut bob = Client::login(addr, "bob", "bob-pw").await.unwrap();
    assert_eq!(
        value(&bob.get("k").await.unwrap()).unwrap().as_deref(),
        Some(&b"v"[..])
    );
    let denied = error(&bob.set("k", "bob was here").await.unwrap()).unwrap();
    assert!(
        matches!(&denied, ErrorReply::NoPermission { reason } if reason.contains("role read")),
        "{denied:?}"
    );
    assert!(matches!(
        bob.del("k").await.unwrap(),
        Reply::Error(ErrorReply::NoPermission { .. })
    ));
    bob.cluster_status().await.unwrap();
    let mut root = Client::login(addr, "root", "root-pw").await.unwrap();
    let r = root.set_until_acked("k", "root", CONVERGE).await;
    cluster.explain(r).unwrap();
    // Reads are per connection (`session`) by default: bob, on his own,
    // sees root's write once every replica has it.
    cluster.wait_steady(CONVERGE).await.unwrap();
    assert_eq!(
        value(&bob.get("k").await.unwrap()).unwrap().as_deref(),
        Some(&b"root"[..])
    );

    // The file changes: alice is removed. Her open connection is refused
    // from its next request; bob's goes on.
    users_file(dir.path(), false);
    sighup_and_wait(&mut cluster, "users file reloaded").await;
    let gone = error(&alice.get("k").await.unwrap()).unwrap();
    assert!(
        matches!(&gone, ErrorReply::NoPermission { reason } if reason.contains("no longer exists")),
        "{gone:?}"
    );
    let again = refusal(Client::login(addr, "alice", "alice-pw").await);
    assert!(again.contains("wrong user name or password"), "{again}");
    // A file that does not parse keeps the users it replaced.
    std::fs::write(&file, "bob:read:not-a-hash\n").unwrap();
    sighup_and_wait(&mut cluster, "users file not reloaded").await;
    assert!(value(&bob.get("k").await.unwrap()).is_ok());
    Client::login(addr, "root", "root-pw").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_keeps_failing_is_held_back_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path(), true);
    let cluster = with_users(&file).await;
    let addr = cluster.balancer_addr();
    for _ in 0..MAX_FAILURES {
        refusal(Client::login(addr, "alice", "guess").await);
    }
    // Now even the right password waits out the window.
    let held = refusal(Client::login(addr, "alice", "alice-pw").await);
    assert!(held.contains("too many failed logins"), "{held}");
    let balancer = cluster.balancer().unwrap();
    let logged = balancer.proc.count_logged("client login refused").unwrap();
    assert!(logged >= 1, "no failed login was logged");
    assert!(
        balancer.proc.stderr_tail().contains("127.0.0.1"),
        "the log names the peer"
    );
}

#[test]
fn a_balancer_with_a_bad_users_file_exits_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    std::fs::write(&file, "# ok\nalice:write:plaintext-password\n").unwrap();
    let exe = semikv_tests::bin::balancer().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "127.0.0.1:0",
            "127.0.0.1:1",
            "--users-file",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 2") && stderr.contains("PHC"),
        "{stderr}"
    );
}
