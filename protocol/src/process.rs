//! Process set-up the semikv binaries share (the `process` feature, which
//! the client library does without): logging, the descriptor limit and the
//! connection limit it allows, shutdown signals, the ready file, the accept
//! loop.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{default_max_connections, Admission, Admitted, RESERVED_DESCRIPTORS};
use crate::net::Listener;
use crate::transport::Stream;

/// How long the accept loop pauses after a failed accept (usually out of
/// file descriptors) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `shutdown` is cancelled, each
/// through a slot of `admission` (refused with a frame that says so when
/// none is free, logged at most every [`crate::admission::REPORT_EVERY`]),
/// and runs `serve(stream, peer, reserved)` for it on `tasks`, holding its
/// slot until that ends; `reserved`: the slot is one kept for peers
/// ([`crate::admission::Slot::is_reserved`]). A failed accept is logged and retried after a pause; it never
/// stops the loop. `what` names the listener in log lines.
pub async fn accept_loop<F, S>(
    listener: &Listener,
    admission: &Admission,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
    what: &str,
    mut serve: F,
) where
    F: FnMut(Stream, SocketAddr, bool) -> S,
    S: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match admission.admit(stream) {
                    Admitted::Yes(stream, slot) => {
                        tracing::debug!(peer = %peer, listener = what, "connection accepted");
                        let serving = serve(stream, peer, slot.is_reserved());
                        tasks.spawn(async move {
                            serving.await;
                            drop(slot);
                        });
                    }
                    Admitted::No { report } => {
                        if let Some(refused) = report {
                            tracing::warn!(peer = %peer, listener = what, max = admission.max(), refused, "connection limit reached; refusing new connections until some close");
                        }
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

/// How a process writes its log lines (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message and
    /// fields), for log shippers.
    Json,
}

/// Sets up logging to stderr: level info, `RUST_LOG` overrides; colours
/// only on a terminal. Stdout stays for program output.
pub fn init_tracing() {
    init_tracing_as(LogFormat::Text);
}

/// [`init_tracing`] in `format`.
pub fn init_tracing_as(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// Cancels `token` on the first SIGINT or SIGTERM (logged). Needs a tokio
/// runtime.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
        tracing::info!("signal received; shutting down");
        token.cancel();
    });
}

/// Writes `addr` and a newline to `path` through a temporary file and a
/// rename, so a reader never sees half an address.
///
/// # Errors
/// Any I/O failure writing or renaming the file.
pub fn write_ready_file(path: &Path, addr: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Raises this process's open-descriptor limit to its hard limit and
/// returns the limit now in force, so that connection limits can be sized
/// below it (see [`crate::admission::default_max_connections`]).
///
/// # Errors
/// The limit could not be read; a failure to raise it only keeps the
/// current one, which is returned.
pub fn raise_descriptor_limit() -> Result<u64, String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("reading the open-file limit: {e}"))?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Ok(hard);
    }
    Ok(soft)
}

/// The connection limit a process runs with, and how it was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimit {
    /// Connections its listener holds open at once.
    pub max: usize,
    /// The open-file limit in force (after raising it), if it could be read.
    pub open_files: Option<u64>,
    /// The limit asked for, when it was above what the open-file limit can
    /// back and was lowered to `max`: the caller should say so.
    pub lowered_from: Option<u64>,
}

/// The connection limit to run with: `asked` if given, else
/// [`default_max_connections`] of the open-file limit, which this raises to
/// its hard limit first. An asked limit the descriptors cannot back is
/// lowered, with a warning: past it a flood would make the log's own files
/// fail to open.
pub fn connection_limit(asked: Option<u64>) -> usize {
    let limit = limit_for(asked, raise_descriptor_limit().ok());
    if let Some(asked) = limit.lowered_from {
        tracing::warn!(asked, max = limit.max, open_file_limit = ?limit.open_files, "--max-connections is above what the open-file limit can back; lowered");
    }
    if limit.open_files.is_none() {
        tracing::warn!(
            max = limit.max,
            "cannot read the open-file limit; connection limit sized for 1024"
        );
    }
    limit.max
}

/// [`connection_limit`]'s decision, given the open-file limit.
fn limit_for(asked: Option<u64>, open_files: Option<u64>) -> ConnectionLimit {
    // Unreadable: assume the common default rather than no limit at all.
    let descriptors = open_files.unwrap_or(1024);
    let backed = descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(16);
    let (max, lowered_from) = match asked {
        None => (
            u64::try_from(default_max_connections(descriptors)).unwrap_or(u64::MAX),
            None,
        ),
        Some(asked) if asked > backed => (backed, Some(asked)),
        Some(asked) => (asked, None),
    };
    ConnectionLimit {
        max: usize::try_from(max).unwrap_or(usize::MAX),
        open_files,
        lowered_from,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn an_asked_limit_is_kept_unless_the_descriptors_cannot_back_it() {
        let limit = limit_for(Some(10), Some(20_000));
        assert_eq!((limit.max, limit.lowered_from), (10, None));
        let huge = limit_for(Some(u64::MAX), Some(20_000));
        assert_eq!(
            (huge.max, huge.lowered_from),
            (20_000 - 128, Some(u64::MAX))
        );
        assert_eq!(limit_for(None, Some(20_000)).max, 10_000);
        assert_eq!(
            limit_for(None, None).max,
            1024 - 128,
            "unreadable: sized for 1024"
        );
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(raise_descriptor_limit().unwrap(), hard);
    }
}

/// Parses `--cluster-secret-file`: the secret in that file (see
/// [`crate::auth::ClusterSecret::from_file`]), which no other user may
/// read, as with SSH keys: a secret the whole machine can read protects
/// nothing.
///
/// # Errors
/// What is wrong with the file, for the command line's error.
pub fn parse_secret_file(path: &str) -> Result<crate::auth::ClusterSecret, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = Path::new(path);
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("reading the cluster secret file {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the cluster secret file {} can be read by other users (mode {mode:03o}); \
             run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    crate::auth::ClusterSecret::from_file(path).map_err(|e| e.to_string())
}

/// Protected mode, as Redis has it: a process listening beyond loopback
/// must be secured (`secured`: a cluster secret, or users on a balancer)
/// unless the operator says `--insecure`.
///
/// # Errors
/// The refusal to print, naming `flags`, the ones that would secure it.
pub fn protected_mode(
    listen: SocketAddr,
    secured: bool,
    insecure: bool,
    flags: &str,
) -> Result<(), String> {
    if listen.ip().is_loopback() || secured || insecure {
        return Ok(());
    }
    Err(format!(
        "refusing to listen on {listen} unprotected: anyone who can reach it could \
         take over the cluster. Set {flags}, listen on a loopback address, or pass \
         --insecure if that is really what you mean"
    ))
}

#[cfg(test)]
mod secret_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_secret_file_others_can_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("semikv-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "x".repeat(40)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = parse_secret_file(file.to_str().unwrap()).unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(parse_secret_file(file.to_str().unwrap()).is_ok());
        std::fs::write(&file, "short").unwrap();
        let err = parse_secret_file(file.to_str().unwrap()).unwrap_err();
        assert!(err.contains("at least 32"), "{err}");
        let err = parse_secret_file(dir.join("absent").to_str().unwrap()).unwrap_err();
        assert!(err.contains("absent"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_an_unprotected_listener_beyond_loopback_is_refused() {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        assert!(protected_mode(lo, false, false, "--x").is_ok());
        assert!(protected_mode(any, true, false, "--x").is_ok());
        assert!(protected_mode(any, false, true, "--x").is_ok());
        let err = protected_mode(any, false, false, "--cluster-secret-file").unwrap_err();
        assert!(err.contains("--cluster-secret-file") && err.contains("--insecure"));
    }
}

/// Runs `reload` on every SIGHUP until `shutdown` (what operators send
/// after editing a users file or rotating certificates). Nothing happens
/// when SIGHUP cannot be watched, but a warning.
pub async fn on_sighup(shutdown: CancellationToken, mut reload: impl FnMut() + Send) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; nothing will be reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        reload();
    }
}

/// The TLS flags both binaries take.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct TlsArgs {
    /// Serve TLS with this certificate chain (PEM); with --tls-key.
    /// Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The CA of every peer's certificate (PEM): connect to peers over TLS
    /// and verify them with it, presenting --tls-cert; a replica also
    /// requires balancers and replicas to present a certificate it signed.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The TLS these flags ask for, loaded (see [`tls_from_flags`]).
    ///
    /// # Errors
    /// As [`tls_from_flags`].
    pub fn load(&self) -> Result<Option<std::sync::Arc<crate::tls::Tls>>, String> {
        tls_from_flags(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_ca.as_deref(),
        )
        .map(|tls| tls.map(std::sync::Arc::new))
    }
}

/// Loads `--tls-cert`, `--tls-key` and `--tls-ca` as given: the first two
/// together or not at all, the CA only with them.
///
/// # Errors
/// What is missing or wrong, naming the flag or the file.
pub fn tls_from_flags(
    cert: Option<&Path>,
    key: Option<&Path>,
    ca: Option<&Path>,
) -> Result<Option<crate::tls::Tls>, String> {
    match (cert, key) {
        (None, None) if ca.is_none() => Ok(None),
        (None, None) => Err("--tls-ca needs --tls-cert and --tls-key too: this process \
                             presents its own certificate to the peers it verifies"
            .into()),
        (Some(_), None) | (None, Some(_)) => Err("--tls-cert and --tls-key go together".into()),
        (Some(cert), Some(key)) => crate::tls::Tls::load(crate::tls::TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            ca: ca.map(Path::to_path_buf),
        })
        .map(Some)
        .map_err(|e| e.to_string()),
    }
}
