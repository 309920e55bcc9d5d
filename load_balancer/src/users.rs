//! Client users of the balancer's doors: who may log in, with which
//! password, what each role may do, and how failed logins are held back.
//!
//! The users file (`--users-file`) has one user per line,
//! `NAME:ROLE:HASH`, where HASH is an Argon2id PHC string (`semikv passwd`
//! writes such a line); blank lines and lines starting with `#` are
//! skipped. It is read at start-up and again on SIGHUP; a file that does
//! not parse keeps the users already loaded, with an error logged.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

// tokio's clock: the simulated one under a paused runtime, std's otherwise.
use tokio::time::Instant;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use semikv_protocol::Op;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserRole {
    /// Reads and status.
    Read,
    /// Reads, status and writes.
    Write,
    /// Everything a client may do, and the admin commands to come.
    Admin,
    /// Status, ping and the key count, never a key or a value: what a
    /// metrics scraper or a dashboard needs.
    Monitor,
}

impl UserRole {
    /// Whether this role may run `op` (admin ops are refused to every
    /// client connection before this).
    pub fn permits(self, op: &Op) -> bool {
        match self {
            UserRole::Admin => true,
            UserRole::Write => !op.is_admin(),
            UserRole::Read => !op.is_admin() && !op.is_write(),
            UserRole::Monitor => match op {
                Op::Ping | Op::Status | Op::DbSize => true,
                Op::Read(read) => matches!(*read.op, Op::DbSize),
                _ => false,
            },
        }
    }

    /// The role named `name` (`read`, `write`, `admin`, `monitor`).
    pub fn parse(name: &str) -> Option<UserRole> {
        match name {
            "read" => Some(UserRole::Read),
            "write" => Some(UserRole::Write),
            "admin" => Some(UserRole::Admin),
            "monitor" => Some(UserRole::Monitor),
            _ => None,
        }
    }
}

impl fmt::Display for UserRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UserRole::Read => "read",
            UserRole::Write => "write",
            UserRole::Admin => "admin",
            UserRole::Monitor => "monitor",
        })
    }
}

/// One line of the users file.
#[derive(Clone)]
struct User {
    role: UserRole,
    /// The PHC string, checked at load.
    hash: String,
}

/// Why a users file (or a line for one) is unusable.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read.
    #[error("reading the users file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("users file {path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// Its 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A name, role or password cannot make a line.
    #[error("{0}")]
    Invalid(String),
}

/// Checks a user name: 1 to 64 characters of letters, digits, `_`, `-`
/// and `.` (so a line splits unambiguously and logs stay readable).
///
/// # Errors
/// What is wrong with it.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "user name {name:?}: use 1 to 64 letters, digits, '_', '-' or '.'"
        ))
    }
}

/// A users-file line for `name` with `role` and `password`: a fresh random
/// salt, Argon2id with the crate's default cost (19 MiB, 2 passes).
///
/// # Errors
/// [`UsersError::Invalid`] for a bad name or an empty password, or when no
/// randomness or hashing failed.
pub fn line_for(name: &str, role: UserRole, password: &str) -> Result<String, UsersError> {
    check_name(name).map_err(UsersError::Invalid)?;
    if password.is_empty() {
        return Err(UsersError::Invalid("the password is empty".into()));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| UsersError::Invalid(format!("no randomness: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UsersError::Invalid(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| UsersError::Invalid(format!("hashing the password: {e}")))?;
    Ok(format!("{name}:{role}:{hash}"))
}

fn parse(path: &Path, text: &str) -> Result<HashMap<String, User>, UsersError> {
    let mut users = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| UsersError::Line {
            path: path.display().to_string(),
            line: i + 1,
            reason,
        };
        let mut parts = line.splitn(3, ':');
        let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected NAME:ROLE:HASH".into()));
        };
        check_name(name).map_err(bad)?;
        let role = UserRole::parse(role)
            .ok_or_else(|| bad(format!("role {role:?}: use read, write or admin")))?;
        PasswordHash::new(hash).map_err(|e| {
            bad(format!(
                "the hash is not a PHC string ({e}); `semikv passwd` writes one"
            ))
        })?;
        if users
            .insert(
                name.to_string(),
                User {
                    role,
                    hash: hash.to_string(),
                },
            )
            .is_some()
        {
            return Err(bad(format!("user {name} appears twice")));
        }
    }
    Ok(users)
}

/// Failed logins allowed per address within [`FAILURE_WINDOW`]; past them
/// its logins are refused unchecked until the window ends.
pub const MAX_FAILURES: u32 = 5;
/// See [`MAX_FAILURES`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// Addresses remembered at once; the oldest are forgotten past it.
const MAX_REMEMBERED: usize = 10_000;

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Unknown user or wrong password (never said apart).
    #[error("wrong user name or password")]
    Wrong,
    /// Too many failures from this address lately.
    #[error("too many failed logins from this address; try again in {0} s")]
    HeldBack(u64),
}

/// The users of a balancer, reloadable, and its failed-login counts.
pub struct Users {
    path: PathBuf,
    current: RwLock<Arc<HashMap<String, User>>>,
    /// Bumped by every reload that replaced the users: connections cache
    /// their user's role until it moves.
    generation: AtomicU64,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// A hash to check unknown users' passwords against, so they take as
    /// long to refuse as wrong passwords.
    decoy: String,
    /// Password checks running at once: one per core. Each costs tens of
    /// milliseconds of CPU; a flood of logins from many addresses queues
    /// here (within the handshake timeout) rather than filling the
    /// blocking pool and starving the event loop's cores.
    checking: Arc<tokio::sync::Semaphore>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("path", &self.path)
            .field("users", &self.read().len())
            .finish_non_exhaustive()
    }
}

impl Users {
    /// The users in `path`.
    ///
    /// # Errors
    /// [`UsersError`] when the file cannot be read or a line is malformed.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let users = read_file(path)?;
        let decoy = line_for("decoy", UserRole::Read, "decoy")?
            .splitn(3, ':')
            .nth(2)
            .unwrap_or_default()
            .to_string();
        Ok(Users {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(users)),
            generation: AtomicU64::new(0),
            failures: Mutex::new(HashMap::new()),
            decoy,
            checking: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, usize::from),
            )),
        })
    }

    /// Reads the file again; on success its users replace the old ones
    /// (returns how many), on failure the old ones stay.
    ///
    /// # Errors
    /// As [`Users::load`].
    pub fn reload(&self) -> Result<usize, UsersError> {
        let users = read_file(&self.path)?;
        let count = users.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(users);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(count)
    }

    /// How many reloads replaced the users so far: a role read at one
    /// generation holds until the next.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The file the users come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Arc<HashMap<String, User>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `name`'s role now: `None` once it is no longer in the file.
    pub fn role_of(&self, name: &str) -> Option<UserRole> {
        self.read().get(name).map(|u| u.role)
    }

    /// Checks `password` for `name`, from `peer`: its role, or why not. The
    /// hash is checked on a blocking thread (tens of milliseconds of CPU),
    /// at most one per core at a time.
    ///
    /// # Errors
    /// [`LoginError`].
    pub async fn login(
        &self,
        peer: IpAddr,
        name: &str,
        password: &str,
    ) -> Result<UserRole, LoginError> {
        let source = source_of(peer);
        // The attempt counts as a failure from the start: logins racing
        // from one source cannot get past the limit together.
        self.reserve(source)?;
        let user = self.read().get(name).cloned();
        let hash = user.as_ref().map_or(self.decoy.clone(), |u| u.hash.clone());
        let password = password.to_string();
        // Never closed: acquiring cannot fail. The turn goes with the
        // check, so a login given up on (its handshake timed out) holds it
        // until the check it started is over.
        let Ok(turn) = self.checking.clone().acquire_owned().await else {
            return Err(LoginError::Wrong);
        };
        let matches = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        match user {
            Some(user) if matches => {
                // Takes back this attempt's count only: a good login does
                // not wipe the failures before it (or one valid account
                // would reset every guess at another).
                self.release(source);
                Ok(user.role)
            }
            _ => Err(LoginError::Wrong),
        }
    }

    /// Counts an attempt from `source`, or refuses it when the source has
    /// [`MAX_FAILURES`] in the current window.
    fn reserve(&self, source: IpAddr) -> Result<(), LoginError> {
        let mut failures = semikv_protocol::sync::lock(&self.failures);
        let now = Instant::now();
        if failures.len() >= MAX_REMEMBERED {
            failures.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
            if failures.len() >= MAX_REMEMBERED {
                // Bounded memory first: the semaphore still bounds the cost
                // of the sources this forgets.
                failures.clear();
            }
        }
        let entry = failures.entry(source).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_WINDOW {
            *entry = (0, now);
        }
        if entry.0 >= MAX_FAILURES {
            let left = FAILURE_WINDOW.saturating_sub(now.duration_since(entry.1));
            return Err(LoginError::HeldBack(left.as_secs().max(1)));
        }
        entry.0 += 1;
        Ok(())
    }

    fn release(&self, source: IpAddr) {
        if let Some(entry) = semikv_protocol::sync::lock(&self.failures).get_mut(&source) {
            entry.0 = entry.0.saturating_sub(1);
        }
    }
}

/// Where failed logins are counted: the address, or for IPv6 its /64 (one
/// host usually holds a whole /64, and would otherwise guess unchecked
/// from each of its addresses).
fn source_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(std::net::Ipv6Addr::from(octets))
        }
    }
}

fn read_file(path: &Path) -> Result<HashMap<String, User>, UsersError> {
    let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(path, &text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn file(lines: &[String]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, lines.join("\n")).unwrap();
        (dir, path)
    }

    #[test]
    fn roles_allow_what_they_say() {
        let get = Op::Get { key: "k".into() };
        let set = Op::Set {
            key: "k".into(),
            value: "v".into(),
        };
        for (role, reads, writes) in [
            (UserRole::Read, true, false),
            (UserRole::Write, true, true),
            (UserRole::Admin, true, true),
        ] {
            assert_eq!(role.permits(&get), reads);
            assert_eq!(role.permits(&Op::Status), reads);
            assert_eq!(role.permits(&set), writes);
            assert_eq!(role.permits(&Op::Delete { key: "k".into() }), writes);
        }
        let monitor = UserRole::Monitor;
        assert!(monitor.permits(&Op::Status) && monitor.permits(&Op::Ping));
        assert!(monitor.permits(&Op::DbSize));
        assert!(!monitor.permits(&get) && !monitor.permits(&set));
        let wrapped = |op: Op| {
            Op::Read(semikv_protocol::Read {
                op: Box::new(op),
                level: None,
                after: semikv_protocol::LogIndex(0),
            })
        };
        assert!(monitor.permits(&wrapped(Op::DbSize)));
        assert!(!monitor.permits(&wrapped(get.clone())));
        let scan = Op::Scan(semikv_protocol::Scan {
            cursor: 0,
            count: 10,
            pattern: None,
        });
        assert!(!monitor.permits(&scan));
        assert_eq!(UserRole::parse("monitor"), Some(monitor));
        assert_eq!(monitor.to_string(), "monitor");
    }

    #[tokio::test]
    async fn a_line_written_for_a_user_logs_it_in_and_nothing_else() {
        let (_dir, path) = file(&[
            "# the users".into(),
            line_for("alice", UserRole::Write, "secret one").unwrap(),
            String::new(),
            line_for("bob", UserRole::Read, "secret two").unwrap(),
        ]);
        let users = Users::load(&path).unwrap();
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            users.login(peer, "alice", "secret one").await,
            Ok(UserRole::Write)
        );
        assert_eq!(
            users.login(peer, "bob", "secret two").await,
            Ok(UserRole::Read)
        );
        assert_eq!(
            users.login(peer, "bob", "secret one").await,
            Err(LoginError::Wrong)
        );
        assert_eq!(
            users.login(peer, "carol", "secret one").await,
            Err(LoginError::Wrong)
        );
        assert_eq!(users.role_of("alice"), Some(UserRole::Write));
        assert_eq!(users.role_of("carol"), None);
    }

    #[tokio::test]
    async fn failures_from_one_address_are_held_back_and_others_are_not() {
        let (_dir, path) = file(&[line_for("alice", UserRole::Write, "pw").unwrap()]);
        let users = Users::load(&path).unwrap();
        let bad: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                users.login(bad, "alice", "nope").await,
                Err(LoginError::Wrong)
            );
        }
        // Even the right password waits out the window.
        assert!(matches!(
            users.login(bad, "alice", "pw").await,
            Err(LoginError::HeldBack(_))
        ));
        let good: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!(users.login(good, "alice", "pw").await, Ok(UserRole::Write));
    }

    #[tokio::test]
    async fn a_good_login_does_not_wipe_the_failures_and_racing_logins_count() {
        let (_dir, path) = file(&[
            line_for("alice", UserRole::Write, "pw").unwrap(),
            line_for("mallory", UserRole::Read, "mine").unwrap(),
        ]);
        let users = Arc::new(Users::load(&path).unwrap());
        let peer: IpAddr = "127.0.0.4".parse().unwrap();
        for _ in 0..MAX_FAILURES - 1 {
            assert_eq!(
                users.login(peer, "alice", "guess").await,
                Err(LoginError::Wrong)
            );
        }
        // Her own good login in between leaves the guesses counted.
        assert_eq!(
            users.login(peer, "mallory", "mine").await,
            Ok(UserRole::Read)
        );
        assert_eq!(
            users.login(peer, "alice", "guess").await,
            Err(LoginError::Wrong)
        );
        assert!(matches!(
            users.login(peer, "mallory", "mine").await,
            Err(LoginError::HeldBack(_))
        ));
        // Many at once from one fresh source: at most MAX_FAILURES checked.
        let racing: IpAddr = "127.0.0.5".parse().unwrap();
        let attempts = (0..20).map(|_| {
            let users = users.clone();
            tokio::spawn(async move { users.login(racing, "alice", "guess").await })
        });
        let mut wrong = 0;
        for attempt in attempts {
            if attempt.await.unwrap() == Err(LoginError::Wrong) {
                wrong += 1;
            }
        }
        assert_eq!(wrong, MAX_FAILURES);
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(source_of(v4), v4);
    }

    #[test]
    fn a_bad_file_names_its_line_and_a_bad_reload_keeps_the_users() {
        let good = line_for("alice", UserRole::Admin, "pw").unwrap();
        for (bad, says) in [
            ("alice:write".to_string(), "NAME:ROLE:HASH"),
            (
                "alice:root:$argon2id$x".to_string(),
                "use read, write or admin",
            ),
            ("alice:read:plaintext".to_string(), "PHC"),
            ("al ice:read:x".to_string(), "user name"),
            (good.clone(), "appears twice"),
        ] {
            let (_dir, path) = file(&[good.clone(), bad.clone()]);
            let err = Users::load(&path).unwrap_err().to_string();
            assert!(err.contains("line 2") && err.contains(says), "{bad}: {err}");
        }
        let (_dir, path) = file(std::slice::from_ref(&good));
        let users = Users::load(&path).unwrap();
        std::fs::write(&path, "garbage").unwrap();
        assert!(users.reload().is_err());
        assert_eq!(users.role_of("alice"), Some(UserRole::Admin));
        std::fs::write(&path, "").unwrap();
        assert_eq!(users.reload().unwrap(), 0);
        assert_eq!(users.role_of("alice"), None);
    }

    #[test]
    fn names_and_passwords_are_checked_before_hashing() {
        assert!(line_for("", UserRole::Read, "pw").is_err());
        assert!(line_for("a:b", UserRole::Read, "pw").is_err());
        assert!(line_for("alice", UserRole::Read, "").is_err());
    }
}
