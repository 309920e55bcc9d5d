//! Command-line contract: bad arguments exit with status 2 and say why.

use std::process::Command;
use std::time::Duration;

use semikv_tests::{bin, Proc};

/// Runs `exe args` to completion (bounded) and returns (exit code, stderr).
fn run(exe: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let mut cmd = Command::new(exe);
    cmd.args(args).current_dir(dir.path());
    let mut proc = Proc::spawn("cli", cmd, &stderr).unwrap();
    let status = proc.wait_exit(Duration::from_secs(30)).unwrap();
    let text = std::fs::read_to_string(&stderr).unwrap();
    // Drop the harness's own marker line.
    let text = text.lines().skip(1).collect::<Vec<_>>().join("\n");
    (status.code(), text)
}

#[test]
fn server_without_arguments_exits_2_with_usage() {
    let exe = bin::server().unwrap();
    let (code, stderr) = run(&exe, &[]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.to_lowercase().contains("usage"), "stderr: {stderr}");
}

#[test]
fn server_with_bad_id_exits_2_naming_it() {
    let exe = bin::server().unwrap();
    let (code, stderr) = run(&exe, &["not-a-number"]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("not-a-number"), "stderr: {stderr}");
}

#[test]
fn server_with_bad_fsync_policy_exits_2_naming_it() {
    let exe = bin::server().unwrap();
    let (code, stderr) = run(
        &exe,
        &["1", "--listen", "127.0.0.1:0", "--fsync", "sometimes"],
    );
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("sometimes") || stderr.contains("fsync"),
        "stderr: {stderr}"
    );
}

#[test]
fn server_with_a_zero_or_absurd_memory_limit_exits_2_saying_why() {
    let exe = bin::server().unwrap();
    for (limit, says) in [
        ("0", "leave the flag out"),
        ("512", "did you leave out a unit"),
        ("2pb", "expected bytes or a size"),
    ] {
        let (code, stderr) = run(
            &exe,
            &["1", "--listen", "127.0.0.1:0", "--max-memory", limit],
        );
        assert_eq!(code, Some(2), "--max-memory {limit}: {stderr}");
        assert!(stderr.contains(says), "--max-memory {limit}: {stderr}");
    }
}

#[test]
fn server_with_bad_listen_address_exits_2() {
    let exe = bin::server().unwrap();
    let (code, stderr) = run(&exe, &["1", "--listen", "nowhere"]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("nowhere"), "stderr: {stderr}");
}

#[test]
fn server_with_unknown_flag_exits_2() {
    let exe = bin::server().unwrap();
    let (code, stderr) = run(&exe, &["1", "--frobnicate"]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("frobnicate"), "stderr: {stderr}");
}

#[test]
fn balancer_without_replicas_exits_2() {
    let exe = bin::balancer().unwrap();
    let (code, stderr) = run(&exe, &["127.0.0.1:0"]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(!stderr.trim().is_empty());
}

#[test]
fn balancer_with_bad_replica_address_exits_2() {
    let exe = bin::balancer().unwrap();
    let (code, stderr) = run(&exe, &["127.0.0.1:0", "not-an-address"]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("not-an-address"), "stderr: {stderr}");
}

#[test]
fn balancer_with_bad_listen_address_exits_2() {
    let exe = bin::balancer().unwrap();
    let (code, stderr) = run(&exe, &["nowhere", "127.0.0.1:1"]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("nowhere"), "stderr: {stderr}");
}

#[test]
fn a_secret_file_others_can_read_or_too_short_exits_2_saying_why() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let loose = dir.path().join("loose.secret");
    std::fs::write(&loose, "x".repeat(64)).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let short = dir.path().join("short.secret");
    std::fs::write(&short, "x".repeat(31)).unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (file, says) in [(&loose, "chmod 600"), (&short, "at least 32")] {
        let file = file.to_str().unwrap();
        let server = bin::server().unwrap();
        let (code, stderr) = run(
            &server,
            &[
                "1",
                "--listen",
                "127.0.0.1:0",
                "--cluster-secret-file",
                file,
            ],
        );
        assert_eq!(code, Some(2), "{file}: {stderr}");
        assert!(stderr.contains(says), "{file}: {stderr}");
        let balancer = bin::balancer().unwrap();
        let (code, stderr) = run(
            &balancer,
            &["127.0.0.1:0", "127.0.0.1:1", "--cluster-secret-file", file],
        );
        assert_eq!(code, Some(2), "{file}: {stderr}");
        assert!(stderr.contains(says), "{file}: {stderr}");
    }
}

/// Protected mode: beyond loopback, nothing starts unsecured unless told.
#[test]
fn listening_beyond_loopback_without_a_secret_exits_2_naming_the_flags() {
    let server = bin::server().unwrap();
    let (code, stderr) = run(&server, &["1", "--listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--cluster-secret-file") && stderr.contains("--insecure"),
        "{stderr}"
    );
    let balancer = bin::balancer().unwrap();
    let (code, stderr) = run(&balancer, &["0.0.0.0:0", "127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--cluster-secret-file") && stderr.contains("--insecure"),
        "{stderr}"
    );
}

#[test]
fn tls_flags_out_of_their_pairs_exit_2_saying_why() {
    let server = bin::server().unwrap();
    for (args, says) in [
        (
            vec!["--tls-cert", "c.pem", "--tls-key", "k.pem"],
            "needs --tls-ca",
        ),
        (
            vec!["--tls-cert", "c.pem", "--tls-ca", "ca.pem"],
            "go together",
        ),
    ] {
        let mut all = vec!["1", "--listen", "127.0.0.1:0"];
        all.extend(args);
        let (code, stderr) = run(&server, &all);
        assert_eq!(code, Some(2), "{all:?}: {stderr}");
        assert!(stderr.contains(says), "{all:?}: {stderr}");
    }
    let balancer = bin::balancer().unwrap();
    let (code, stderr) = run(
        &balancer,
        &["127.0.0.1:0", "127.0.0.1:1", "--tls-ca", "ca.pem"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("needs --tls-cert"), "{stderr}");
}
