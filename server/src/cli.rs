//! The `semikv-server` command line: arguments, logging, runtime, signals.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use semikv_protocol::auth::ClusterSecret;
use semikv_protocol::frame::DEFAULT_MAX_FRAME_LEN;
use semikv_protocol::process::parse_secret_file;
use semikv_protocol::ReplicaId;
use tokio_util::sync::CancellationToken;

use crate::config::{parse_max_memory, Config, FsyncPolicy, DEFAULT_SNAPSHOT_BYTES};

/// Port of replica 0; replica N listens on `BASE_PORT + N` by default.
pub const BASE_PORT: u16 = 8080;

/// One semikv replica.
#[derive(Debug, Parser)]
#[command(
    name = "semikv-server",
    version,
    about = "semikv replica: in-memory map, write-ahead log, semi-synchronous replication"
)]
pub struct Args {
    /// Replica id; the default port is 8080 + ID.
    pub id: u16,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Data directory [default: ./data/replica-ID].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// WAL fsync policy: always, interval:MS or never.
    #[arg(long, default_value = "always", value_name = "POLICY")]
    pub fsync: FsyncPolicy,
    /// Write the bound address to FILE once serving (then `http ADDR` on a
    /// second line with --http).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Largest frame accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_LEN, value_name = "BYTES")]
    pub max_frame: usize,
    /// Log bytes since the last snapshot that trigger a new snapshot.
    #[arg(long, default_value_t = DEFAULT_SNAPSHOT_BYTES, value_name = "BYTES")]
    pub snapshot_bytes: usize,
    /// Connections held open at once; more are refused [default: 10000, or
    /// the open-file limit less 128 if that is lower].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Bytes of frames over 64 KiB that all accepted connections together
    /// (clients, balancers, followers) may buffer while they arrive; a
    /// connection whose next frame does not fit stops reading until bytes
    /// come back. Raised to --max-frame if lower [default: 512 MiB].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_buffered_input: Option<u64>,
    /// Close a client connection idle for this many seconds (nothing in
    /// flight, nothing sent); 0: never. Balancers and followers are never
    /// timed out.
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub idle_timeout_secs: u64,
    /// Most the store may hold (keys, values and about 100 bytes per key);
    /// past it, writes that would grow it are refused with OutOfMemory
    /// while reads and deletes go on [default: no limit]. Bytes, or k/m/g
    /// (powers of 1000), kb/mb/gb (powers of 1024), as in Redis: 512mb.
    #[arg(long, value_name = "BYTES", value_parser = parse_max_memory)]
    pub max_memory: Option<u64>,
    /// File holding the cluster secret (at least 32 bytes, readable by this
    /// user only; `semikv secret FILE` writes one). Balancers and replicas
    /// must then prove they hold the same secret, and clients are refused
    /// (they go through the balancer) [default: no secret].
    #[arg(long, value_name = "FILE", value_parser = parse_secret_file)]
    pub cluster_secret_file: Option<ClusterSecret>,
    /// Listen beyond loopback without a cluster secret: anyone who reaches
    /// the port can then fence, promote or read everything.
    #[arg(long)]
    pub insecure: bool,
    /// TLS on the listener and to the leader.
    #[command(flatten)]
    pub tls: semikv_protocol::process::TlsArgs,
    /// Also serve HTTP on this address: `/healthz`, `/readyz`, `/v1/status`
    /// and Prometheus `/metrics` (no data, no control); HTTPS with
    /// --tls-cert (port 0: any free port) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Log lines as text, or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = semikv_protocol::process::LogFormat::Text)]
    pub log_format: semikv_protocol::process::LogFormat,
}

impl Args {
    /// The configuration and listen address these arguments describe.
    ///
    /// # Errors
    /// An id whose default port would not fit in a port number.
    pub fn into_config(self) -> anyhow::Result<(Config, SocketAddr)> {
        let listen = match self.listen {
            Some(addr) => addr,
            None => {
                let port = BASE_PORT.checked_add(self.id).with_context(|| {
                    format!(
                        "replica id {} gives no valid default port; pass --listen",
                        self.id
                    )
                })?;
                SocketAddr::from(([127, 0, 0, 1], port))
            }
        };
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("./data/replica-{}", self.id)));
        let mut config = Config::new(ReplicaId(u32::from(self.id)), data_dir);
        config.fsync = self.fsync;
        config.max_frame_len = self.max_frame;
        config.snapshot_bytes = self.snapshot_bytes;
        if let Some(bytes) = self.max_buffered_input {
            config.max_buffered_input = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        config.ready_file = self.ready_file;
        config.idle_timeout = (self.idle_timeout_secs > 0)
            .then(|| std::time::Duration::from_secs(self.idle_timeout_secs));
        config.max_memory = self.max_memory;
        semikv_protocol::process::protected_mode(
            listen,
            self.cluster_secret_file.is_some(),
            self.insecure,
            "--cluster-secret-file",
        )
        .map_err(anyhow::Error::msg)?;
        config.cluster_secret = self.cluster_secret_file;
        if self.tls.tls_cert.is_some() && self.tls.tls_ca.is_none() {
            anyhow::bail!(
                "--tls-cert on a replica needs --tls-ca too: followers reach their leader \
                 over TLS and must verify it, and a TLS listener refuses plain peers"
            );
        }
        config.tls = self.tls.load().map_err(anyhow::Error::msg)?;
        Ok((config, listen))
    }
}

pub use semikv_protocol::process::{cancel_on_signals, init_tracing};

/// Runs `semikv-server` with `args` (`args[0]` is the program name).
/// Exit codes: 0 after a clean shutdown, 1 on a runtime failure, 2 on bad
/// arguments (a cluster secret file that cannot be used, or an unprotected
/// listener beyond loopback, included).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let asked = args.max_connections;
    let (http, log_format) = (args.http, args.log_format);
    let (config, listen) = match args.into_config() {
        Ok(described) => described,
        Err(e) => {
            eprintln!("semikv-server: {e:#}");
            return ExitCode::from(2);
        }
    };
    semikv_protocol::process::init_tracing_as(log_format);
    match run_main(config, listen, http, asked) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "semikv-server failed");
            eprintln!("semikv-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_main(
    mut config: Config,
    listen: SocketAddr,
    http: Option<SocketAddr>,
    asked: Option<u64>,
) -> anyhow::Result<()> {
    // Raises the process's open-file limit: done here, at start-up, not
    // when merely turning arguments into a configuration.
    config.max_connections = semikv_protocol::process::connection_limit(asked);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let http = match http {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for HTTP on {addr}"))?
                    .into(),
            ),
            None => None,
        };
        let shutdown = CancellationToken::new();
        cancel_on_signals(shutdown.clone());
        crate::run_with_http(config, listener, http, shutdown)
            .await
            .map(|_| ())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_budget_defaults_and_can_be_set() {
        let (config, _) = Args::try_parse_from(["semikv-server", "1"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(
            config.max_buffered_input,
            semikv_protocol::budget::DEFAULT_READ_BUDGET
        );
        let (config, _) =
            Args::try_parse_from(["semikv-server", "1", "--max-buffered-input", "33554432"])
                .unwrap()
                .into_config()
                .unwrap();
        assert_eq!(config.max_buffered_input, 32 * 1024 * 1024);
        assert!(Args::try_parse_from(["semikv-server", "1", "--max-buffered-input", "0"]).is_err());
    }

    fn config(args: &[&str]) -> Config {
        let args = Args::try_parse_from(["semikv-server", "1"].iter().chain(args)).unwrap();
        args.into_config().unwrap().0
    }

    #[test]
    fn max_memory_is_off_unless_asked() {
        assert_eq!(config(&[]).max_memory, None);
        assert_eq!(config(&["--max-memory", "2mb"]).max_memory, Some(2 << 20));
        assert!(Args::try_parse_from(["semikv-server", "1", "--max-memory", "0"]).is_err());
    }
}
