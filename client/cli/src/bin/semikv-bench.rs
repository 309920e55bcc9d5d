//! `semikv-bench`: a load generator for semikv — throughput, latency
//! percentiles, read checking and availability, as text or JSON.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use semikv_cli::bench::{self, BenchConfig, Progress, Stop};
use semikv_client::ClientConfig;

/// Load-test a semikv cluster.
///
/// Every client is one connection with --pipeline requests in flight; every
/// get is checked against what that client last wrote for the key: older
/// values (follower lag) are counted as stale, values the key never held as
/// wrong. Exit code 1 if any read was wrong.
#[derive(Debug, Parser)]
#[command(name = "semikv-bench", version)]
struct Cli {
    /// Balancer (or replica) address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    clients: u32,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: u32,
    /// Stop after this many requests in total (default 100000).
    #[arg(long, conflicts_with = "duration")]
    requests: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    /// Mix of sets and gets, as SET:GET weights.
    #[arg(long, default_value = "1:1", value_parser = parse_ratio)]
    ratio: (u32, u32),
    /// Keys per client.
    #[arg(long, default_value_t = 10_000)]
    keyspace: u64,
    /// Bytes per value.
    #[arg(long, value_name = "B", default_value_t = 100)]
    value_size: usize,
    /// Write every key once before the measured run (untimed), so that gets
    /// read values instead of misses.
    #[arg(long)]
    prefill: bool,
    /// Seed of the key and operation choices (random when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Availability mode, to run while someone kills or pauses the leader:
    /// lead the report with the longest window without a successful write
    /// and the Indeterminate/Unavailable counts. Kills nothing itself.
    #[arg(long)]
    failover: bool,
    /// Do not draw the progress line (drawn on stderr, a few times a second,
    /// only when stderr is a terminal and without --json).
    #[arg(long)]
    no_progress: bool,
    /// Log in as this user (a balancer started with --users-file); the
    /// password comes from SEMIKV_PASSWORD or --password-file.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Read the password from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    password_file: Option<std::path::PathBuf>,
    /// Connect to the balancer with TLS, verifying it with this CA (PEM).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Read at this consistency level: stale, session, linearizable or
    /// bounded:MS [default: the balancer's].
    #[arg(long, value_name = "LEVEL")]
    consistency: Option<semikv_client::Consistency>,
    /// Log lines (on stderr) as text, or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = semikv_protocol::process::LogFormat::Text)]
    log_format: semikv_protocol::process::LogFormat,
}

/// Columns of the progress line: one short of 80, so that a terminal that
/// wraps as soon as the last column is written does not scroll on every
/// redraw.
const PROGRESS_WIDTH: usize = bench::MAX_PROGRESS_WIDTH - 1;

/// Redraws the progress line in place: carriage return, the line, then
/// clear to the end of the line (what a longer previous line left).
fn draw_progress(progress: &Progress, failover: bool) {
    let mut progress = *progress;
    if !failover {
        progress.write_gap = None;
    }
    let line = bench::progress_line(&progress, PROGRESS_WIDTH);
    let mut stderr = std::io::stderr().lock();
    // A progress line that cannot be drawn is not worth failing the run.
    let _ = write!(stderr, "\r{line}\x1b[K");
    let _ = stderr.flush();
}

/// Erases the progress line, so the report starts on a clean line.
fn clear_progress() {
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "\r\x1b[K");
    let _ = stderr.flush();
}

fn parse_ratio(text: &str) -> Result<(u32, u32), String> {
    let (set, get) = text
        .split_once(':')
        .ok_or_else(|| "expected SET:GET, e.g. 1:9".to_string())?;
    let weight = |text: &str, name: &str| {
        text.trim()
            .parse::<u32>()
            .map_err(|e| format!("bad {name} weight: {e}"))
    };
    Ok((weight(set, "SET")?, weight(get, "GET")?))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    semikv_protocol::process::init_tracing_as(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("semikv-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let stop = match (cli.requests, cli.duration) {
        (_, Some(secs)) => {
            anyhow::ensure!(
                secs.is_finite() && secs > 0.0,
                "--duration must be positive"
            );
            Stop::Duration(Duration::from_secs_f64(secs))
        }
        (Some(n), None) => Stop::Requests(n),
        (None, None) => Stop::Requests(100_000),
    };
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let config = BenchConfig {
        addr: cli.addr,
        clients: cli.clients,
        pipeline: cli.pipeline,
        stop,
        set_weight: cli.ratio.0,
        get_weight: cli.ratio.1,
        keyspace: cli.keyspace,
        value_size: cli.value_size,
        seed,
        prefill: cli.prefill,
        client: ClientConfig {
            credentials: semikv_cli::credentials::credentials(
                cli.user.as_deref(),
                cli.password_file.as_deref(),
                |k| std::env::var(k).ok(),
            )?,
            tls: semikv_cli::credentials::tls(cli.tls_ca.as_deref())?,
            request_timeout: Duration::from_millis(cli.timeout_ms),
            max_in_flight: usize::try_from(cli.pipeline).unwrap_or(usize::MAX).max(1),
            consistency: cli.consistency,
            ..ClientConfig::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let progress = !cli.json && !cli.no_progress && std::io::stderr().is_terminal();
    let report = if progress {
        let failover = cli.failover;
        let mut draw = |p: &Progress| draw_progress(p, failover);
        let result = runtime.block_on(bench::run_with_progress(
            config,
            bench::PROGRESS_INTERVAL,
            &mut draw,
        ));
        clear_progress();
        result?
    } else {
        runtime.block_on(bench::run(config))?
    };
    let level = cli
        .consistency
        .map_or_else(|| "default".to_string(), |l| l.to_string());
    let text = if cli.json {
        let mut json = report.to_json();
        if let Some(fields) = json.as_object_mut() {
            fields.insert("consistency".to_string(), serde_json::json!(level));
        }
        serde_json::to_string_pretty(&json).context("cannot render JSON")?
    } else if cli.failover {
        format!("{}\n{}", report.availability(), report.to_text())
    } else {
        format!("{}\nreads: {level}", report.to_text())
    };
    // Not println!: it panics when stdout is a pipe whose reader has gone
    // (`semikv-bench ... | head -1`).
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("cannot write the report");
        }
    }
    Ok(if report.wrong_values == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
