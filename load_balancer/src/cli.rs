//! The `semikv-lb` command line: argument parsing, logging set-up, the tokio
//! runtime, the ready file and signal handling around [`crate::run`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;

use semikv_protocol::auth::ClusterSecret;
use semikv_protocol::process::LogFormat;

use crate::users::Users;
use semikv_protocol::{MAX_SYNC_REPLICAS, MAX_SYNC_TIMEOUT_MS};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Config;

/// `semikv-lb LISTEN REPLICA... [options]`
#[derive(Debug, Parser)]
#[command(
    name = "semikv-lb",
    about = "semikv load balancer: leader election, routing, failover"
)]
pub struct Args {
    /// Address to accept clients on, e.g. 127.0.0.1:8080 (port 0: any free port).
    #[arg(value_parser = host_port)]
    pub listen: String,
    /// Replica addresses, e.g. 127.0.0.1:8081 127.0.0.1:8082.
    #[arg(required = true, num_args = 1.., value_parser = host_port)]
    pub replicas: Vec<String>,
    /// Interval between health checks, in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_ms: u64,
    /// Missed health checks in a row after which a replica is down.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub down_after: u32,
    /// Followers that must acknowledge a write (capped at the other replicas).
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_SYNC_REPLICAS)))]
    pub sync_replicas: u32,
    /// How long a write waits for those acknowledgements, in milliseconds
    /// (at most an hour: replicas refuse longer).
    #[arg(long, default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_SYNC_TIMEOUT_MS))]
    pub sync_timeout_ms: u64,
    /// The consistency of reads that name none: `stale` (any replica),
    /// `session` (read-your-writes, monotonic), `linearizable` (the leader,
    /// after it confirms it leads) or `bounded:MS` (a replica known to lag
    /// less than MS milliseconds, else the leader). A client may choose its
    /// own per request or per connection.
    #[arg(long, value_name = "LEVEL", default_value = "session")]
    pub read_consistency: semikv_protocol::Consistency,
    /// Also accept Redis clients (RESP2, RESP3 after HELLO 3) on this
    /// address, e.g. 127.0.0.1:6379 (port 0: any free port) [default: off].
    #[arg(long, value_name = "ADDR", value_parser = host_port)]
    pub resp: Option<String>,
    /// Also serve HTTP on this address: the key-value API (`/v1/kv/KEY`),
    /// `/v1/status`, `/healthz`, `/readyz` and Prometheus `/metrics`;
    /// HTTPS with --tls-cert (port 0: any free port) [default: off].
    #[arg(long, value_name = "ADDR", value_parser = host_port)]
    pub http: Option<String>,
    /// Log lines as text, or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Once listening, write the bound addresses here (atomically): the
    /// semikv door's on the first line, then `resp ADDR` when `--resp` is
    /// given and `http ADDR` when `--http` is.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Client connections held open at once; more are refused [default:
    /// 10000, or the open-file limit less 128 if that is lower].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Bytes of answers one client may leave unread before it is
    /// disconnected (never below the frame limit, so one answer alone does
    /// not trip it) [default: 256 MiB].
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1024 * 1024..))]
    pub max_client_output: Option<u64>,
    /// Bytes of client frames over 64 KiB that all connections together may
    /// buffer while they arrive; a client whose next frame does not fit is
    /// not read until bytes come back (smaller frames are read anyway).
    /// Raised to the frame limit (16 MiB) if lower [default: 512 MiB].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_buffered_input: Option<u64>,
    /// Close a client connection idle for this many seconds (nothing in
    /// flight, nothing sent); 0: never.
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub idle_timeout_secs: u64,
    /// File holding the cluster secret, the same as the replicas' (at least
    /// 32 bytes, readable by this user only; `semikv secret FILE` writes
    /// one): the balancer proves it to every replica and checks their
    /// proof [default: no secret].
    #[arg(long, value_name = "FILE", value_parser = semikv_protocol::process::parse_secret_file)]
    pub cluster_secret_file: Option<ClusterSecret>,
    /// File of the users clients log in as, one `NAME:ROLE:HASH` line each
    /// (`semikv passwd NAME ROLE` writes one); reloaded on SIGHUP. Without
    /// it, anyone who reaches the balancer may read and write.
    #[arg(long, value_name = "FILE", value_parser = load_users)]
    pub users_file: Option<Arc<Users>>,
    /// Listen beyond loopback without a cluster secret or users.
    #[arg(long)]
    pub insecure: bool,
    /// TLS on the client door and to the replicas.
    #[command(flatten)]
    pub tls: semikv_protocol::process::TlsArgs,
}

fn load_users(path: &str) -> Result<Arc<Users>, String> {
    Users::load(std::path::Path::new(path))
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Accepts `HOST:PORT` (an IP address or a name, and a port number), so a
/// typo is a usage error at start-up rather than a replica that is forever
/// down.
fn host_port(s: &str) -> Result<String, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, got {s:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("missing host in {s:?}"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("invalid port {port:?} in {s:?}"))?;
    Ok(s.to_string())
}

impl Args {
    /// The TLS these arguments ask for, loaded.
    ///
    /// # Errors
    /// A flag missing its partner, or a file that cannot be used.
    pub fn tls(&self) -> Result<Option<Arc<semikv_protocol::tls::Tls>>, String> {
        self.tls.load()
    }

    /// The run-time configuration these arguments describe (without TLS,
    /// see [`Args::tls`]).
    pub fn config(&self) -> Config {
        let mut config = Config::new(self.replicas.clone());
        config.heartbeat = Duration::from_millis(self.heartbeat_ms);
        config.down_after = self.down_after;
        config.sync_replicas = self.sync_replicas;
        config.sync_timeout = Duration::from_millis(self.sync_timeout_ms);
        config.read_consistency = self.read_consistency;
        config.idle_timeout =
            (self.idle_timeout_secs > 0).then(|| Duration::from_secs(self.idle_timeout_secs));
        if let Some(bytes) = self.max_client_output {
            config.max_client_output = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        if let Some(bytes) = self.max_buffered_input {
            config.max_buffered_input = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        config.cluster_secret = self.cluster_secret_file.clone();
        config.users = self.users_file.clone();
        config.derive_waits();
        config
    }

    /// Protected mode (see [`semikv_protocol::process::protected_mode`]) for
    /// every address the listen address resolves to.
    ///
    /// # Errors
    /// The refusal to print.
    pub fn check_protected(&self) -> Result<(), String> {
        use std::net::ToSocketAddrs;
        let mut addrs = Vec::new();
        let doors = std::iter::once(&self.listen)
            .chain(self.resp.as_ref())
            .chain(self.http.as_ref());
        for listen in doors {
            addrs.extend(
                listen
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve {listen}: {e}"))?,
            );
        }
        for addr in addrs {
            semikv_protocol::process::protected_mode(
                addr,
                self.cluster_secret_file.is_some() || self.users_file.is_some(),
                self.insecure,
                "--cluster-secret-file and --users-file",
            )?;
        }
        Ok(())
    }
}

/// Runs `semikv-lb` with `args` (`args[0]` is the program name) until SIGINT
/// or SIGTERM. Bad arguments exit with code 2 and clap's message, as does
/// an unprotected listener beyond loopback.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Err(refused) = args.check_protected() {
        eprintln!("semikv-lb: {refused}");
        return ExitCode::from(2);
    }
    let tls = match args.tls() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("semikv-lb: {e}");
            return ExitCode::from(2);
        }
    };
    semikv_protocol::process::init_tracing_as(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("semikv-lb: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "balancer failed");
            eprintln!("semikv-lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args, tls: Option<Arc<semikv_protocol::tls::Tls>>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("no local address")?;
    info!(addr = %addr, "bound");
    let mut ready = addr.to_string();
    let resp = match &args.resp {
        Some(resp_addr) => {
            let resp = TcpListener::bind(resp_addr)
                .await
                .with_context(|| format!("cannot listen for RESP clients on {resp_addr}"))?;
            let bound = resp.local_addr().context("no local address")?;
            info!(addr = %bound, "RESP door bound");
            ready.push_str(&format!("\nresp {bound}"));
            Some(resp.into())
        }
        None => None,
    };
    let http = match &args.http {
        Some(http_addr) => {
            let http = TcpListener::bind(http_addr)
                .await
                .with_context(|| format!("cannot listen for HTTP clients on {http_addr}"))?;
            let bound = http.local_addr().context("no local address")?;
            info!(addr = %bound, "HTTP door bound");
            ready.push_str(&format!("\nhttp {bound}"));
            Some(http.into())
        }
        None => None,
    };
    if let Some(path) = &args.ready_file {
        write_ready_file(path, &ready)
            .with_context(|| format!("cannot write ready file {}", path.display()))?;
    }
    let shutdown = CancellationToken::new();
    semikv_protocol::process::cancel_on_signals(shutdown.clone());
    let mut config = args.config();
    config.tls = tls;
    config.max_connections = semikv_protocol::process::connection_limit(args.max_connections);
    let doors = crate::Doors {
        semikv: listener.into(),
        resp,
        http,
    };
    crate::run_doors(config, doors, shutdown).await
}

pub use semikv_protocol::process::write_ready_file;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_host_and_port() {
        assert!(host_port("127.0.0.1:8081").is_ok());
        assert!(host_port("localhost:0").is_ok());
        assert!(host_port("[::1]:8081").is_ok());
        assert!(host_port("not-an-address").is_err());
        assert!(host_port(":8081").is_err());
        assert!(host_port("127.0.0.1:99999").is_err());
        assert!(Args::try_parse_from(["semikv-lb", "nowhere", "127.0.0.1:1"]).is_err());
    }

    #[test]
    fn seed_usage_parses_with_defaults() {
        let args = Args::try_parse_from([
            "semikv-lb",
            "127.0.0.1:0",
            "127.0.0.1:8081",
            "127.0.0.1:8082",
        ])
        .unwrap();
        assert_eq!(args.replicas.len(), 2);
        let c = args.config();
        assert_eq!(c.heartbeat, Duration::from_millis(100));
        assert_eq!(c.down_after, 3);
        assert_eq!(c.sync_replicas, 1);
        assert_eq!(c.sync_timeout, Duration::from_millis(2000));
        assert_eq!(
            c.max_buffered_input,
            semikv_protocol::budget::DEFAULT_READ_BUDGET
        );
    }

    #[test]
    fn options_parse() {
        let args = Args::try_parse_from([
            "semikv-lb",
            "127.0.0.1:0",
            "a:1",
            "--heartbeat-ms",
            "20",
            "--down-after",
            "2",
            "--sync-replicas",
            "2",
            "--sync-timeout-ms",
            "500",
            "--ready-file",
            "/tmp/x",
            "--max-buffered-input",
            "33554432",
        ])
        .unwrap();
        let c = args.config();
        assert_eq!(c.max_buffered_input, 32 * 1024 * 1024);
        assert_eq!(c.heartbeat, Duration::from_millis(20));
        assert_eq!(c.down_after, 2);
        assert_eq!(c.sync_replicas, 2);
        assert_eq!(args.ready_file, Some(PathBuf::from("/tmp/x")));
    }

    #[test]
    fn settings_replicas_would_refuse_are_usage_errors() {
        for bad in [
            ["--sync-timeout-ms", "3600001"],
            ["--sync-timeout-ms", "0"],
            ["--sync-replicas", "256"],
        ] {
            let err =
                Args::try_parse_from(["semikv-lb", "127.0.0.1:0", "127.0.0.1:1", bad[0], bad[1]])
                    .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
        let edge = Args::try_parse_from([
            "semikv-lb",
            "127.0.0.1:0",
            "127.0.0.1:1",
            "--sync-timeout-ms",
            "3600000",
            "--sync-replicas",
            "255",
        ]);
        assert!(edge.is_ok());
    }

    #[test]
    fn missing_replicas_is_a_usage_error() {
        let err = Args::try_parse_from(["semikv-lb", "127.0.0.1:0"]).unwrap_err();
        assert!(err.use_stderr());
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn ready_file_is_written_whole() {
        let dir = std::env::temp_dir().join(format!("semikv-lb-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ready");
        write_ready_file(&path, "127.0.0.1:1234").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "127.0.0.1:1234\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
