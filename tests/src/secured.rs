//! The harness's secured mode, `SEMIKV_SECURED=1`: every replica and
//! balancer the harness starts gets one cluster secret, every balancer a
//! users file with one user, and the harness's own connections prove the
//! secret to replicas (as the balancer role, which may read and write
//! there) and log in to balancers. With `SEMIKV_TLS=1`, every process
//! also serves TLS and verifies its peers (one throwaway CA, one
//! certificate for 127.0.0.1), and the harness connects over TLS with a
//! certificate of its own. Suites written for an open cluster, the fault
//! suite above all, then run unchanged against a secured one (`.ci/run`
//! runs them all three ways). Tests of authentication itself pass their own
//! flags and expect refusals: they are not meant for this mode. Nor are
//! cuts by role under TLS: the fault relays learn a connection's role from
//! its handshake, which TLS hides from them.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use semikv_protocol::auth::ClusterSecret;
use semikv_protocol::tls::testing::TestCa;
use semikv_protocol::tls::{TlsClientConfig, TlsFiles};

/// The variable that turns the mode on.
pub const ENV: &str = "SEMIKV_SECURED";
/// The variable that adds TLS to it (and turns it on).
pub const TLS_ENV: &str = "SEMIKV_TLS";
/// The user the harness logs in as.
pub const USER: &str = "harness";
/// Its password.
pub const PASSWORD: &str = "harness-password";

struct Material {
    secret: ClusterSecret,
    secret_file: PathBuf,
    users_file: PathBuf,
    /// Every process's TLS files, and the harness's client side.
    tls: Option<(TlsFiles, Arc<TlsClientConfig>)>,
}

static MATERIAL: OnceLock<Result<Material, String>> = OnceLock::new();
static BALANCERS: Mutex<Option<HashSet<SocketAddr>>> = Mutex::new(None);

fn set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether the mode is on (`SEMIKV_TLS=1` turns it on too).
pub fn enabled() -> bool {
    set(ENV) || tls_enabled()
}

/// Whether TLS is part of it.
pub fn tls_enabled() -> bool {
    set(TLS_ENV)
}

/// The secret and files, made once per test process (in a directory of
/// the system's temp dir named after the process).
fn material() -> anyhow::Result<&'static Material> {
    let made = MATERIAL.get_or_init(|| make().map_err(|e| format!("{e:#}")));
    made.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

fn make() -> anyhow::Result<Material> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("semikv-secured-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret_file = dir.join("cluster.secret");
    crate::cluster::write_secret(&secret_file)?;
    let secret = ClusterSecret::from_file(&secret_file)?;
    let users_file = dir.join("users");
    let line = semikv_lb::users::line_for(USER, semikv_lb::users::UserRole::Admin, PASSWORD)?;
    std::fs::write(&users_file, format!("{line}\n"))
        .with_context(|| format!("writing {}", users_file.display()))?;
    std::fs::set_permissions(&users_file, std::fs::Permissions::from_mode(0o600))?;
    let tls = if tls_enabled() {
        let ca = TestCa::new(&dir, "secured").map_err(|e| anyhow::anyhow!("{e}"))?;
        let node = ca.issue(&dir, "node").map_err(|e| anyhow::anyhow!("{e}"))?;
        let harness = ca
            .issue(&dir, "harness")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let client =
            semikv_protocol::tls::client_config(&ca.ca_file, Some((&harness.cert, &harness.key)))?;
        Some((node, Arc::new(client)))
    } else {
        None
    };
    Ok(Material {
        secret,
        secret_file,
        users_file,
        tls,
    })
}

fn has(args: &[OsString], flag: &str) -> bool {
    args.iter().any(|a| a == flag)
}

/// Arguments to add to a replica's in this mode (none it already has).
///
/// # Errors
/// The secret could not be made.
pub fn replica_args(args: &[OsString]) -> anyhow::Result<Vec<OsString>> {
    if !enabled() {
        return Ok(Vec::new());
    }
    let m = material()?;
    let mut extra = Vec::new();
    if !has(args, "--cluster-secret-file") {
        extra.extend(["--cluster-secret-file".into(), m.secret_file.clone().into()]);
    }
    if let Some((files, _)) = m.tls.as_ref().filter(|_| !has(args, "--tls-cert")) {
        extra.extend([
            OsString::from("--tls-cert"),
            files.cert.clone().into(),
            OsString::from("--tls-key"),
            files.key.clone().into(),
        ]);
        if let Some(ca) = &files.ca {
            extra.extend([OsString::from("--tls-ca"), ca.clone().into()]);
        }
    }
    Ok(extra)
}

/// The TLS the harness connects with, in this mode with TLS.
///
/// # Errors
/// The certificates could not be made.
pub fn tls() -> anyhow::Result<Option<Arc<TlsClientConfig>>> {
    if tls_enabled() {
        material().map(|m| m.tls.as_ref().map(|(_, client)| client.clone()))
    } else {
        Ok(None)
    }
}

/// Arguments to add to a balancer's in this mode (none it already has).
///
/// # Errors
/// The secret or the users file could not be made.
pub fn balancer_args(args: &[OsString]) -> anyhow::Result<Vec<OsString>> {
    let mut extra = replica_args(args)?;
    if enabled() && !has(args, "--users-file") {
        extra.extend(["--users-file".into(), material()?.users_file.clone().into()]);
    }
    Ok(extra)
}

/// The secret the harness proves, in this mode.
///
/// # Errors
/// The secret could not be made.
pub fn secret() -> anyhow::Result<Option<&'static ClusterSecret>> {
    if enabled() {
        material().map(|m| Some(&m.secret))
    } else {
        Ok(None)
    }
}

/// Notes that a balancer listens at `addr` (so connections there log in).
pub fn balancer_started(addr: SocketAddr) {
    let mut set = semikv_protocol::sync::lock(&BALANCERS);
    set.get_or_insert_with(HashSet::new).insert(addr);
}

/// Notes that the balancer at `addr` is gone.
pub fn balancer_stopped(addr: SocketAddr) {
    if let Some(set) = semikv_protocol::sync::lock(&BALANCERS).as_mut() {
        set.remove(&addr);
    }
}

/// Whether a balancer the harness started listens at `addr`.
pub fn is_balancer(addr: SocketAddr) -> bool {
    semikv_protocol::sync::lock(&BALANCERS)
        .as_ref()
        .is_some_and(|set| set.contains(&addr))
}
