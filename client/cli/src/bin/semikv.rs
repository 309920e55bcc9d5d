//! `semikv`: the semikv command-line client — a REPL on a terminal, a script
//! runner on a pipe, a one-shot command with arguments, and with `--local` a
//! whole local cluster to try it on.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use semikv_cli::credentials;
use semikv_cli::local::{
    self, LocalCluster, LocalOptions, Reaper, BALANCER_SUBCOMMAND, REPLICA_SUBCOMMAND,
};
use semikv_cli::output::Style;
use semikv_cli::script::{run_once, run_script};
use semikv_cli::{repl, Session};
use semikv_client::ClientConfig;

/// Replicas `--local` starts when no N is given.
const DEFAULT_LOCAL_REPLICAS: u32 = 3;

/// The semikv client.
///
/// With no COMMAND on a terminal: an interactive REPL. With stdin not a
/// terminal: one command per line, one result line each; exit code 1 if any
/// failed. With a COMMAND: run it and exit (`semikv get foo`,
/// `semikv set foo=bar`).
///
/// `--local [N]` starts N replicas (default 3) and a balancer on free ports,
/// with a cluster secret of their own, waits for a leader and runs against
/// it; everything is stopped on exit. In local mode the REPL also has
/// `kill ID` and `restart ID`.
///
/// `semikv secret FILE` writes a new cluster secret to FILE (mode 600), for
/// `--cluster-secret-file` on every replica and balancer. `semikv passwd
/// NAME ROLE` prints a line for `semikv-lb --users-file`.
#[derive(Debug, Parser)]
#[command(name = "semikv", version)]
struct Cli {
    /// Address of the balancer (or a replica).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Print `status` as JSON.
    #[arg(long)]
    json: bool,
    /// Start a local cluster of N replicas (default 3) and run against it.
    #[arg(
        long,
        value_name = "N",
        num_args = 0..=1,
        default_missing_value = "3",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    local: Option<u32>,
    /// With --local: keep data and logs here instead of a temporary directory.
    #[arg(long, value_name = "DIR", requires = "local")]
    data_dir: Option<PathBuf>,
    /// Log in as this user (a balancer started with --users-file); the
    /// password comes from SEMIKV_PASSWORD or --password-file.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Read the password from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Connect to the balancer with TLS, verifying it with this CA (PEM).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Read at this consistency level: stale, session, linearizable or
    /// bounded:MS [default: the balancer's, session unless it says
    /// otherwise]. The REPL's `consistency` command changes it.
    #[arg(long, value_name = "LEVEL")]
    consistency: Option<semikv_client::Consistency>,
    /// Continue a session: read at least what the session that printed
    /// this token (the REPL's `token` command) had seen.
    #[arg(long, value_name = "N")]
    token: Option<u64>,
    /// Log lines (on stderr) as text, or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = semikv_protocol::process::LogFormat::Text)]
    log_format: semikv_protocol::process::LogFormat,
    /// The command to run (`get KEY`, `set KEY=VALUE`, ...), each word taken
    /// literally.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // Hidden subcommands: `--local` re-runs this executable as its children.
    let sub = args.get(1).and_then(|a| a.to_str()).map(str::to_owned);
    if let Some(sub) = sub.filter(|s| s == REPLICA_SUBCOMMAND || s == BALANCER_SUBCOMMAND) {
        return run_child(&sub, args);
    }
    match args.get(1).and_then(|a| a.to_str()) {
        Some(SECRET_COMMAND) => return write_secret(&args[2..]),
        Some(PASSWD_COMMAND) => return passwd(&args[2..]),
        _ => {}
    }
    let cli = Cli::parse_from(optional_local_count(args));
    semikv_protocol::process::init_tracing_as(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("semikv: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `semikv secret FILE`: writes a new cluster secret to FILE.
const SECRET_COMMAND: &str = "secret";

/// `semikv secret FILE`: a new cluster secret (32 random bytes as hex) in
/// FILE, created readable by this user only; an existing FILE is left
/// alone and is an error.
fn write_secret(args: &[OsString]) -> ExitCode {
    let [file] = args else {
        eprintln!("usage: semikv secret FILE   (writes a new cluster secret to FILE, mode 600)");
        return ExitCode::from(2);
    };
    let path = std::path::Path::new(file);
    if path.exists() {
        eprintln!(
            "semikv: {} exists; a cluster secret is never overwritten (remove it first)",
            path.display()
        );
        return ExitCode::from(2);
    }
    match local::write_secret_file(path) {
        Ok(()) => {
            println!(
                "wrote a new cluster secret to {}; give every replica and balancer \
                 --cluster-secret-file with a copy of it",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("semikv: writing {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// `semikv passwd NAME ROLE [--password-file FILE]`: a users-file line.
const PASSWD_COMMAND: &str = "passwd";

/// `semikv passwd NAME ROLE [--password-file FILE]`: prints the users-file
/// line for NAME with ROLE (`read`, `write`, `admin`) and a password from
/// FILE, `SEMIKV_PASSWORD`, or the first line of stdin; append it to the
/// file given to `semikv-lb --users-file`.
fn passwd(args: &[OsString]) -> ExitCode {
    let usage = "usage: semikv passwd NAME ROLE [--password-file FILE]   \
                 (ROLE: read, write, admin or monitor; the password from FILE, \
                 SEMIKV_PASSWORD, or stdin)";
    let words: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    let (name, role, file) = match words.as_slice() {
        [name, role] => (*name, *role, None),
        [name, role, "--password-file", file] => (*name, *role, Some(PathBuf::from(file))),
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let Some(role) = semikv_lb::users::UserRole::parse(role) else {
        eprintln!("semikv: role {role:?}: use read, write, admin or monitor\n{usage}");
        return ExitCode::from(2);
    };
    let password = match credentials::password(file.as_deref(), |k| std::env::var(k).ok()) {
        Ok(Some(password)) => password,
        Ok(None) => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                eprintln!("semikv: reading the password from stdin: {e}");
                return ExitCode::FAILURE;
            }
            line.trim_end_matches(['\r', '\n']).to_string()
        }
        Err(e) => {
            eprintln!("semikv: {e}");
            return ExitCode::from(2);
        }
    };
    match semikv_lb::users::line_for(name, role, &password) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("semikv: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_child(sub: &str, args: Vec<OsString>) -> ExitCode {
    local::die_with_parent();
    let rest = args.into_iter().skip(2);
    if sub == REPLICA_SUBCOMMAND {
        let argv = std::iter::once(OsString::from("semikv-server")).chain(rest);
        semikv_server::cli::main(argv.collect())
    } else {
        let argv = std::iter::once(OsString::from("semikv-lb")).chain(rest);
        semikv_lb::cli::main(argv.collect())
    }
}

enum Mode {
    Repl,
    Script,
    OneShot(Vec<OsString>),
}

/// `--local` takes an optional N, so `semikv --local get k` must not read
/// `get` as N: a `--local` not followed by a number becomes `--local=3`.
fn optional_local_count(mut args: Vec<OsString>) -> Vec<OsString> {
    let mut i = 1;
    // Only options before the command are looked at: the command's own
    // words are taken literally.
    while let Some(arg) = args.get(i).and_then(|a| a.to_str()) {
        if arg == "--" || !arg.starts_with('-') {
            break;
        }
        if matches!(
            arg,
            "--addr" | "--data-dir" | "--user" | "--password-file" | "--tls-ca"
        ) {
            i += 2;
            continue;
        }
        if arg == "--local" {
            let has_count = args
                .get(i + 1)
                .and_then(|a| a.to_str())
                .is_some_and(|a| a.parse::<u32>().is_ok());
            if !has_count {
                args[i] = OsString::from(format!("--local={DEFAULT_LOCAL_REPLICAS}"));
            }
        }
        i += 1;
    }
    args
}

fn run(mut cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;

    let mode = if !cli.command.is_empty() {
        Mode::OneShot(std::mem::take(&mut cli.command))
    } else if std::io::stdin().is_terminal() {
        Mode::Repl
    } else {
        Mode::Script
    };
    let style = Style {
        json: cli.json,
        one_line: matches!(mode, Mode::Script),
    };

    let client = ClientConfig {
        credentials: credentials::credentials(
            cli.user.as_deref(),
            cli.password_file.as_deref(),
            |k| std::env::var(k).ok(),
        )?,
        tls: credentials::tls(cli.tls_ca.as_deref())?,
        consistency: cli.consistency,
        ..ClientConfig::default()
    };
    let mut session = if let Some(replicas) = cli.local {
        let mut options = LocalOptions::new(replicas).context("cannot find this executable")?;
        options.data_dir = cli.data_dir.clone();
        eprintln!("semikv: starting a local cluster of {replicas} replicas");
        let watch_sigint = !matches!(mode, Mode::Repl);
        let signals = {
            let _runtime = runtime.enter();
            StopSignals::register(watch_sigint).context("cannot watch signals")?
        };
        let cluster = runtime
            .block_on(LocalCluster::start(options))
            .context("cannot start the local cluster")?;
        runtime.spawn(signals.reap_on_signal(cluster.reaper()));
        eprintln!(
            "semikv: balancer on {}{}; replicas {}; data and logs in {}",
            cluster.balancer_addr(),
            cluster
                .resp_addr()
                .map(|a| format!(" (Redis clients: {a})"))
                .unwrap_or_default(),
            cluster
                .replica_addrs()
                .iter()
                .map(|(id, addr)| format!("{id}={addr}"))
                .collect::<Vec<_>>()
                .join(" "),
            cluster.dir().display()
        );
        if !cluster.http_addrs().is_empty() {
            eprintln!(
                "semikv: HTTP (curl, /metrics): {}",
                cluster
                    .http_addrs()
                    .iter()
                    .map(|(who, addr)| format!("{who}=http://{addr}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        Session::new(cluster.balancer_addr(), client, style).with_cluster(cluster)
    } else {
        Session::new(cli.addr.clone(), client, style)
    };
    if let Some(token) = cli.token {
        session.observe(semikv_client::LogIndex(token));
    }

    let code = match mode {
        Mode::OneShot(words) => {
            let outcome = runtime.block_on(run_once(&mut session, words));
            if let Some(text) = &outcome.text {
                println!("{text}");
            }
            if outcome.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Mode::Script => {
            let stdin = tokio::io::BufReader::new(tokio::io::stdin());
            let mut stdout = std::io::stdout().lock();
            let summary = runtime
                .block_on(run_script(&mut session, stdin, &mut stdout))
                .context("script i/o failed")?;
            if summary.all_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Mode::Repl => {
            repl::run(&mut session, &runtime).context("the REPL failed")?;
            ExitCode::SUCCESS
        }
    };
    // Stops the local cluster, if any, before the runtime goes away.
    drop(session);
    Ok(code)
}

/// Signals that stop the local cluster, registered before its address is
/// announced so that no signal can slip in between.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Must run inside the runtime.
    fn register(watch_sigint: bool) -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            int: if watch_sigint {
                Some(signal(SignalKind::interrupt())?)
            } else {
                None
            },
        })
    }

    /// Stops the local cluster's processes and exits on the first signal.
    async fn reap_on_signal(mut self, reaper: Reaper) {
        let sigint = async {
            match &mut self.int {
                Some(int) => {
                    int.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let code = tokio::select! {
            _ = self.term.recv() => 143,
            _ = self.hup.recv() => 129,
            () = sigint => 130,
        };
        eprintln!("semikv: stopping the local cluster");
        reaper.reap();
        std::process::exit(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let args = std::iter::once("semikv").chain(args.iter().copied());
        Cli::try_parse_from(optional_local_count(args.map(OsString::from).collect())).unwrap()
    }

    #[test]
    fn local_count_is_optional() {
        let cli = parse(&["--local", "get", "k"]);
        assert_eq!(cli.local, Some(3));
        assert_eq!(cli.command, ["get", "k"]);
        let cli = parse(&["--local", "5", "--data-dir", "/d", "set", "k=v"]);
        assert_eq!(cli.local, Some(5));
        assert_eq!(cli.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(cli.command, ["set", "k=v"]);
        assert_eq!(parse(&["--local"]).local, Some(3));
        assert_eq!(parse(&["get", "--local"]).command, ["get", "--local"]);
        let cli = parse(&["--addr", "127.0.0.1:0", "--local", "ping"]);
        assert_eq!(cli.local, Some(3));
        assert_eq!(cli.command, ["ping"]);
        let cli = parse(&["--json", "status"]);
        assert_eq!(cli.local, None);
        assert!(cli.json);
        assert_eq!(cli.addr, "127.0.0.1:8080");
    }
}
