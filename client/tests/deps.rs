//! The library stays lean: what an application compiles when it depends on
//! `semikv-client` holds none of the server, the balancer or the tools'
//! dependencies. Asks cargo itself for the dependency tree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_client_library_depends_on_no_server_balancer_or_tool_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--package",
            "semikv-client",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    // Proof that the tree was read at all.
    for expected in ["semikv-client", "semikv-protocol", "tokio", "bytes"] {
        assert!(
            crates.contains(&expected),
            "{expected} missing from:\n{tree}"
        );
    }
    for forbidden in [
        "semikv-server",
        "semikv-lb",
        "semikv-cli",
        "rustyline",
        "clap",
        "hdrhistogram",
        "nix",
        "serde_json",
    ] {
        assert!(
            !crates.contains(&forbidden),
            "the client library depends on {forbidden}:\n{tree}"
        );
    }
}
