//! [`Session`]: what a user's commands act on — one server address, reached
//! through the client library's [`RetryingClient`] (which reconnects and
//! retries what is safe to retry, and never a write whose outcome is
//! unknown: the user is told so), and, in local mode, the [`LocalCluster`]
//! that `kill` and `restart` act on. Every retry is announced through the
//! session's notice sink (stderr by default).

use semikv_client::{ClientConfig, ClientError, RetryingClient};
pub use semikv_client::{NoticeSink, RetryPolicy};
use semikv_protocol::{Op, Reply};

use crate::command::{parse_line, Command};
use crate::local::LocalCluster;
use crate::output::{self, Style};

/// The result of one line or command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What to print on stdout; `None` for blank lines, comments and `quit`.
    pub text: Option<String>,
    /// False when the command failed (parse error, error reply, no
    /// connection): script and one-shot modes then exit with code 1.
    pub ok: bool,
    /// The user asked to leave.
    pub quit: bool,
}

impl Outcome {
    fn shown(text: String, ok: bool) -> Outcome {
        Outcome {
            text: Some(text),
            ok,
            quit: false,
        }
    }

    pub(crate) fn failed(message: impl std::fmt::Display) -> Outcome {
        Outcome::shown(output::error(message), false)
    }

    pub(crate) fn nothing() -> Outcome {
        Outcome {
            text: None,
            ok: true,
            quit: false,
        }
    }
}

/// A user's session against one address. Not shared: one front end drives
/// it, one command at a time.
pub struct Session {
    kv: RetryingClient,
    style: Style,
    cluster: Option<LocalCluster>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("kv", &self.kv)
            .field("style", &self.style)
            .field("local", &self.cluster.is_some())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session against `addr`. Nothing is dialled until the first command
    /// needs it.
    pub fn new(addr: impl Into<String>, config: ClientConfig, style: Style) -> Session {
        Session {
            kv: RetryingClient::new(addr, config)
                .with_notices(Box::new(|notice| eprintln!("semikv: {notice}"))),
            style,
            cluster: None,
        }
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Session {
        self.kv = self.kv.with_policy(retry);
        self
    }

    /// Replaces where retry notices go (stderr by default).
    pub fn with_notice_sink(mut self, sink: NoticeSink) -> Session {
        self.kv = self.kv.with_notices(sink);
        self
    }

    /// Gives the session a local cluster: `kill` and `restart` then work, and
    /// the cluster's processes stop when the session is dropped.
    pub fn with_cluster(mut self, cluster: LocalCluster) -> Session {
        self.cluster = Some(cluster);
        self
    }

    /// Raises the session's token (see `semikv_client::Token`): later
    /// reads reflect at least `index`.
    pub fn observe(&self, index: semikv_client::LogIndex) {
        self.kv.observe(index);
    }

    /// The address commands go to.
    pub fn addr(&self) -> &str {
        self.kv.addr()
    }

    /// Whether this session runs a local cluster.
    pub fn is_local(&self) -> bool {
        self.cluster.is_some()
    }

    /// Parses and runs one line of text.
    pub async fn run_line(&mut self, line: &[u8]) -> Outcome {
        match parse_line(line) {
            Ok(Some(command)) => self.execute(command).await,
            Ok(None) => Outcome::nothing(),
            Err(e) => Outcome::failed(e),
        }
    }

    /// Runs one command.
    pub async fn execute(&mut self, command: Command) -> Outcome {
        let mut show = None;
        let op = match command {
            Command::Eval { op, show: how } => {
                show = Some(how);
                op
            }
            Command::Set { key, value } => Op::Set { key, value },
            Command::Get { key } => Op::Get { key },
            Command::Del { key } => Op::Delete { key },
            Command::Ping => Op::Ping,
            Command::Status => Op::Status,
            Command::Keys { pattern } => {
                return match self.kv.keys(pattern).await {
                    Ok(keys) => Outcome::shown(output::keys(&keys), true),
                    Err(e) => Outcome::failed(e),
                };
            }
            Command::Token => return Outcome::shown(format!("(token) {}", self.kv.token()), true),
            Command::Consistency(None) => {
                let level = self
                    .kv
                    .consistency()
                    .map_or_else(|| "the balancer's default".to_string(), |l| l.to_string());
                return Outcome::shown(format!("reads are {level}"), true);
            }
            Command::Consistency(Some(level)) => {
                self.kv.set_consistency(Some(level));
                return Outcome::shown(format!("OK (reads are {level})"), true);
            }
            Command::Help => {
                return Outcome::shown(output::help(self.style, self.is_local()), true)
            }
            Command::Quit => {
                return Outcome {
                    text: None,
                    ok: true,
                    quit: true,
                }
            }
            Command::Kill(id) => {
                let Some(cluster) = self.cluster.as_mut() else {
                    return Outcome::failed("kill works only with --local");
                };
                return match cluster.kill(id) {
                    Ok(()) => Outcome::shown(format!("OK (replica {id} killed)"), true),
                    Err(e) => Outcome::failed(e),
                };
            }
            Command::Restart(id) => {
                let Some(cluster) = self.cluster.as_mut() else {
                    return Outcome::failed("restart works only with --local");
                };
                return match cluster.restart(id).await {
                    Ok(addr) => Outcome::shown(format!("OK (replica {id} on {addr})"), true),
                    Err(e) => Outcome::failed(e),
                };
            }
        };
        let is_write = op.is_write();
        match self.request(op).await {
            Ok(reply) => {
                let (text, ok) = match show {
                    Some(show) => output::evaluated(&reply, show, self.style),
                    None => output::reply(&reply, self.style),
                };
                Outcome::shown(text, ok)
            }
            Err(e @ (ClientError::ConnectionLost { .. } | ClientError::Timeout { .. }))
                if is_write =>
            {
                Outcome::failed(format!("{e} (the write may or may not have been applied)"))
            }
            Err(e) => Outcome::failed(e),
        }
    }

    /// Sends `op` through the retrying client (see the module docs).
    ///
    /// # Errors
    /// The last [`ClientError`] once retries are exhausted or not allowed.
    pub async fn request(&mut self, op: Op) -> Result<Reply, ClientError> {
        self.kv.request(op).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::testing::FakeServer;
    use semikv_client::LogIndex;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn quick_retry() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        }
    }

    fn session(addr: &str) -> (Session, Arc<Mutex<Vec<String>>>) {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let sink = notices.clone();
        let session = Session::new(addr, ClientConfig::default(), Style::default())
            .with_retry(quick_retry())
            .with_notice_sink(Box::new(move |n| sink.lock().unwrap().push(n.to_string())));
        (session, notices)
    }

    async fn text(session: &mut Session, line: &str) -> (String, bool) {
        let outcome = session.run_line(line.as_bytes()).await;
        (outcome.text.unwrap_or_default(), outcome.ok)
    }

    #[tokio::test]
    async fn reads_carry_the_session_token_at_the_chosen_level() {
        let server = FakeServer::start().await;
        let (mut s, _) = session(&server.addr());
        assert_eq!(text(&mut s, "token").await, ("(token) 0".into(), true));
        assert_eq!(text(&mut s, "set a=1").await.0, "OK");
        assert_eq!(text(&mut s, "set b=2").await.0, "OK");
        assert_eq!(text(&mut s, "token").await, ("(token) 2".into(), true));
        assert_eq!(text(&mut s, "get a").await, ("1".into(), true));
        assert_eq!(server.last_read(), Some((None, LogIndex(2))));
        assert_eq!(
            text(&mut s, "consistency").await,
            ("reads are the balancer's default".into(), true)
        );
        assert_eq!(
            text(&mut s, "consistency linearizable").await,
            ("OK (reads are linearizable)".into(), true)
        );
        assert_eq!(text(&mut s, "get b").await, ("2".into(), true));
        assert_eq!(
            server.last_read(),
            Some((
                Some(semikv_protocol::Consistency::Linearizable),
                LogIndex(2)
            )),
            "the token survives the new connection the level takes"
        );
        let (error, ok) = text(&mut s, "consistency strong").await;
        assert!(
            !ok && error.contains("unknown consistency level"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn keys_scan_and_dbsize_page_through_the_key_space() {
        let server = FakeServer::start().await;
        let (mut s, _) = session(&server.addr());
        assert_eq!(text(&mut s, "keys").await, ("(empty array)".into(), true));
        for key in ["a", "b", "c", "user:1", "user:2"] {
            assert_eq!(text(&mut s, &format!("set {key}=v")).await.0, "OK");
        }
        assert_eq!(text(&mut s, "dbsize").await, ("(integer) 5".into(), true));
        assert_eq!(
            text(&mut s, "scan 0 count 2").await,
            ("cursor 2\n1) a\n2) b".into(), true)
        );
        assert_eq!(
            text(&mut s, "scan 4 count 2").await,
            ("cursor 0\n1) user:2".into(), true)
        );
        // `keys` runs the whole scan: more than one page of 1,000 here.
        for i in 0..1500 {
            assert_eq!(text(&mut s, &format!("set k{i:04}=v")).await.0, "OK");
        }
        let (all, ok) = text(&mut s, "keys").await;
        assert!(ok);
        assert_eq!(all.lines().count(), 1505);
        assert_eq!(
            text(&mut s, "keys user:*").await,
            ("1) user:1\n2) user:2".into(), true)
        );
        let (out, ok) = text(&mut s, "scan x").await;
        assert!(!ok && out.contains("x"), "{out}");
        let (out, ok) = text(&mut s, "scan 0 count 0").await;
        assert!(!ok, "{out}");
        let (out, ok) = text(&mut s, "keys a b").await;
        assert!(!ok && out.contains("usage keys [PATTERN]"), "{out}");
    }

    #[tokio::test]
    async fn commands_render_redis_style() {
        let server = FakeServer::start().await;
        let (mut s, _) = session(&server.addr());
        assert_eq!(text(&mut s, "ping").await, ("PONG".into(), true));
        assert_eq!(text(&mut s, "get foo").await, ("(nil)".into(), true));
        assert_eq!(text(&mut s, "set foo=a=b").await, ("OK".into(), true));
        assert_eq!(text(&mut s, "get foo").await, ("a=b".into(), true));
        assert_eq!(
            text(&mut s, r#"set bin "\x00\xff""#).await,
            ("OK".into(), true)
        );
        assert_eq!(server.value(b"bin").as_deref(), Some(&[0u8, 0xff][..]));
        assert_eq!(
            text(&mut s, "get bin").await,
            (r#""\x00\xff""#.into(), true)
        );
        assert_eq!(text(&mut s, "del foo").await, ("OK".into(), true));
        assert_eq!(text(&mut s, "get foo").await, ("(nil)".into(), true));
        assert_eq!(
            text(&mut s, "set readonly=1").await,
            ("(error) NotLeader: leader is 127.0.0.1:1".into(), false)
        );
        let (out, ok) = text(&mut s, "bogus").await;
        assert!(out.starts_with("(error) unknown command"), "{out}");
        assert!(!ok);
        let (out, ok) = text(&mut s, "kill 1").await;
        assert!(out.contains("--local") && !ok, "{out}");
        assert_eq!(s.run_line(b"   ").await.text, None);
        assert!(s.run_line(b"quit").await.quit);
        assert_eq!(server.connections(), 1);
    }

    #[tokio::test]
    async fn lost_connection_is_retried_for_reads_and_announced() {
        let server = FakeServer::start().await;
        let (mut s, notices) = session(&server.addr());
        assert_eq!(text(&mut s, "set a=1").await, ("OK".into(), true));
        assert_eq!(
            text(&mut s, "get hangup-once").await,
            ("(nil)".into(), true)
        );
        assert_eq!(server.connections(), 2);
        let notices = notices.lock().unwrap().clone();
        assert!(
            notices
                .iter()
                .any(|n| n.contains("connection lost") && n.contains("retrying")),
            "{notices:?}"
        );
        assert_eq!(text(&mut s, "get a").await, ("1".into(), true));
    }

    #[tokio::test]
    async fn unreachable_server_fails_after_bounded_retries() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let (mut s, notices) = session(&addr);
        let (out, ok) = text(&mut s, "ping").await;
        assert!(out.starts_with("(error) cannot connect"), "{out}");
        assert!(!ok);
        assert_eq!(notices.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn status_renders_table_or_json() {
        let server = FakeServer::start().await;
        let (mut s, _) = session(&server.addr());
        let (out, ok) = text(&mut s, "status").await;
        assert!(ok);
        assert!(out.starts_with("leader: 127.0.0.1:9001"), "{out}");
        let mut s = Session::new(
            server.addr(),
            ClientConfig::default(),
            Style {
                json: true,
                one_line: false,
            },
        );
        let (out, _) = text(&mut s, "status").await;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["epoch"], "3.ab");
    }
}
