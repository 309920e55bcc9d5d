//! The `semikv` binary in one-shot and script mode, against the in-test fake
//! server (so these tests do not depend on the real server).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/support/fake_server.rs"]
mod fake_server;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::{Output, Stdio};
use std::time::Duration;

use fake_server::FakeServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Bound on any one run of the binary.
const RUN_BOUND: Duration = Duration::from_secs(30);

/// `semikv`, its output captured, killed if the test drops it.
fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_semikv"));
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

fn semikv(addr: &str) -> Command {
    let mut command = command();
    command.arg("--addr").arg(addr);
    command
}

async fn one_shot(addr: &str, args: &[&str]) -> Output {
    let child = semikv(addr).args(args).spawn().unwrap();
    tokio::time::timeout(RUN_BOUND, child.wait_with_output())
        .await
        .expect("semikv did not finish")
        .unwrap()
}

async fn script(addr: &str, extra: &[&str], input: &[u8]) -> Output {
    let mut child = semikv(addr)
        .args(extra)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    tokio::time::timeout(RUN_BOUND, child.wait_with_output())
        .await
        .expect("semikv did not finish")
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_set_get_del() {
    let server = FakeServer::start().await;
    let addr = server.addr();

    let out = one_shot(&addr, &["set", "foo=bar=baz"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "OK\n");
    assert_eq!(server.value(b"foo").as_deref(), Some(&b"bar=baz"[..]));

    let out = one_shot(&addr, &["get", "foo"]).await;
    assert!(out.status.success());
    assert_eq!(stdout(&out), "bar=baz\n");

    let out = one_shot(&addr, &["set", "two words", "value with spaces"]).await;
    assert!(out.status.success());
    assert_eq!(
        server.value(b"two words").as_deref(),
        Some(&b"value with spaces"[..])
    );

    let out = one_shot(&addr, &["del", "foo"]).await;
    assert_eq!(stdout(&out), "OK\n");
    let out = one_shot(&addr, &["GET", "foo"]).await;
    assert!(out.status.success());
    assert_eq!(stdout(&out), "(nil)\n");

    let out = one_shot(&addr, &["ping"]).await;
    assert_eq!(stdout(&out), "PONG\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_failures_exit_1() {
    let server = FakeServer::start().await;
    let addr = server.addr();

    let out = one_shot(&addr, &["set", "readonly=x"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "(error) NotLeader: leader is 127.0.0.1:1\n");

    let out = one_shot(&addr, &["frobnicate"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("(error) unknown command 'frobnicate'"));

    let out = one_shot(&addr, &["get"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("(error) wrong number of arguments"));

    let out = one_shot(&addr, &["kill", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("--local"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_binary_values_round_trip() {
    let server = FakeServer::start().await;
    let addr = server.addr();
    let key = OsString::from_vec(vec![b'k', 0xff]);
    let value = OsString::from_vec(vec![0x01, 0xfe, b'\n', b'"']);
    let child = semikv(&addr)
        .arg("set")
        .arg(&key)
        .arg(&value)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(RUN_BOUND, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        server.value(b"k\xff").as_deref(),
        Some(&b"\x01\xfe\n\""[..])
    );
    // Reading it back in a script, with the key quoted, shows the value
    // quoted with escapes.
    let out = script(&addr, &[], b"get \"k\\xff\"\n").await;
    assert_eq!(stdout(&out), "\"\\x01\\xfe\\n\\\"\"\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_status_table_and_json() {
    let server = FakeServer::start().await;
    let addr = server.addr();
    let out = one_shot(&addr, &["status"]).await;
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.starts_with("leader: 127.0.0.1:9001  epoch: 3.ab\n"),
        "{text}"
    );
    assert!(text.contains("last index"));

    let child = semikv(&addr).arg("--json").arg("status").spawn().unwrap();
    let out = tokio::time::timeout(RUN_BOUND, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["leader"], "127.0.0.1:9001");
    assert_eq!(json["epoch"], "3.ab");
    assert_eq!(json["term"], 3);
    assert_eq!(json["replicas"][1]["healthy"], false);
    assert_eq!(json["replicas"][1]["id"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_mode_one_line_per_command() {
    let server = FakeServer::start().await;
    let addr = server.addr();
    let input = b"set a=1\n\n# a comment\nset \"b c\" \"x\\ty\"\nget a\nget \"b c\"\nget none\nstatus\nhelp\nping\n";
    let out = script(&addr, &[], input).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    assert_eq!(lines[..5], ["OK", "OK", "1", "\"x\\ty\"", "(nil)"]);
    let status: serde_json::Value = serde_json::from_str(lines[5]).unwrap();
    assert_eq!(status["epoch"], "3.ab");
    assert!(lines[6].starts_with("commands: set get del"));
    assert_eq!(lines[7], "PONG");
    assert_eq!(server.value(b"b c").as_deref(), Some(&b"x\ty"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_mode_exit_code_1_if_any_command_failed() {
    let server = FakeServer::start().await;
    let addr = server.addr();
    let out = script(
        &addr,
        &[],
        b"set a=1\nset readonly=2\nget \"unterminated\nset c=3\n",
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "OK");
    assert!(lines[1].starts_with("(error) NotLeader"));
    assert_eq!(lines[2], "(error) unterminated double quote");
    assert_eq!(lines[3], "OK");
    // Failures do not stop the script.
    assert_eq!(server.value(b"c").as_deref(), Some(&b"3"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_mode_flushes_each_result_as_it_is_produced() {
    let server = FakeServer::start().await;
    let mut child = semikv(&server.addr())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for (command, expected) in [("set k=v\n", "OK"), ("get k\n", "v"), ("ping\n", "PONG")] {
        stdin.write_all(command.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
        // The pipe stays open: the answer must arrive before end of input.
        let line = tokio::time::timeout(RUN_BOUND, lines.next_line())
            .await
            .expect("no output before end of input")
            .unwrap();
        assert_eq!(line.as_deref(), Some(expected));
    }
    drop(stdin);
    let status = tokio::time::timeout(RUN_BOUND, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_is_retried_and_told() {
    let server = FakeServer::start().await;
    let out = script(&server.addr(), &[], b"set a=1\nget hangup-once\nget a\n").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "OK\n(nil)\n1\n");
    let err = stderr(&out);
    assert!(
        err.contains("connection lost") && err.contains("retrying"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_an_error_not_a_panic() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let out = one_shot(&addr, &["get", "k"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with("(error) cannot connect"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("retrying"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_input_never_panics() {
    let server = FakeServer::start().await;
    let mut input = Vec::new();
    for i in 0..=255u8 {
        input.extend_from_slice(&[b'g', b'e', b't', b' ', b'"', b'\\', i, b'\n']);
        input.extend_from_slice(&[i, b'=', i, b'\n']);
    }
    input.extend_from_slice(b"set \"\\x\n\"\"\"\"\n=\n\"\n\\\n");
    let out = script(&server.addr(), &[], &input).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_2() {
    let out = bare(&["--bogus"]).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_json_against_the_fake() {
    let server = FakeServer::start().await;
    let child = Command::new(env!("CARGO_BIN_EXE_semikv-bench"))
        .args(["--addr", &server.addr()])
        .args(["--clients", "4", "--pipeline", "2", "--requests", "500"])
        .args(["--ratio", "1:3", "--keyspace", "50", "--value-size", "64"])
        .args(["--seed", "7", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(RUN_BOUND, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], 500);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["wrong_values"], 0);
    assert_eq!(report["seed"], 7);
    assert!(report["latency_us"]["get"]["p99"].as_u64().unwrap() > 0);
}

/// `semikv secret FILE`, bounded.
async fn secret(file: &str) -> Output {
    bare(&["secret", file]).await
}

/// `semikv ARGS` with no `--addr`, bounded.
async fn bare(args: &[&str]) -> Output {
    let child = command().args(args).spawn().unwrap();
    tokio::time::timeout(RUN_BOUND, child.wait_with_output())
        .await
        .expect("semikv did not finish")
        .unwrap()
}

#[tokio::test]
async fn secret_writes_a_private_file_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.secret");
    let file_arg = file.to_str().unwrap();
    let out = secret(file_arg).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.trim_end().len(), 64, "{text}");
    // Never overwritten.
    let again = secret(file_arg).await;
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("never overwritten"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}
