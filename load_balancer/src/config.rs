//! The balancer's run-time configuration, independent of how it was parsed.

use std::time::Duration;

use semikv_protocol::frame::DEFAULT_MAX_FRAME_LEN;

/// Longest an election waits for one replica's answer to `Fence`.
pub const MAX_ELECTION_WAIT: Duration = Duration::from_secs(3);

/// Everything [`crate::run`] needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// Replica addresses, in the order given; a replica's slot is its position.
    /// The address is also what followers are told to connect to.
    pub replicas: Vec<String>,
    /// Interval between health checks; also the timeout of one check.
    pub heartbeat: Duration,
    /// Consecutive missed checks after which a replica is down.
    pub down_after: u32,
    /// Followers that must acknowledge a write (capped at the other replicas).
    pub sync_replicas: u32,
    /// How long the leader waits for those acknowledgements.
    pub sync_timeout: Duration,
    /// How long a write waits for a leader (during a failover) before it is
    /// answered `Unavailable`.
    pub write_wait: Duration,
    /// How long an election waits for each replica's `Fence` answer.
    pub election_wait: Duration,
    /// Longest frame accepted from clients and replicas.
    pub max_frame_len: usize,
    /// Client connections held open at once; past it new ones are refused
    /// with a frame that says so.
    pub max_connections: usize,
    /// Longest a client's request frame may take to arrive whole once its
    /// first bytes did; past it the connection is closed.
    pub frame_timeout: Duration,
    /// Bytes of answers one client connection may leave unread (queued for
    /// it, not yet written to its socket); past it the connection is closed.
    pub max_client_output: usize,
    /// Bytes of large client frames (over
    /// [`semikv_protocol::budget::SMALL_FRAME`]) all connections together
    /// may buffer while they arrive; a client whose next frame does not
    /// fit stops being read until bytes come back. Never below
    /// `max_frame_len`.
    pub max_buffered_input: usize,
    /// How long a client connection may stay idle (nothing in flight,
    /// nothing sent) before it is closed; `None`: never (the default).
    pub idle_timeout: Option<Duration>,
    /// `--cluster-secret-file`: proved to every replica in the handshake
    /// (and their proof checked). `None`: replicas are reached without.
    pub cluster_secret: Option<semikv_protocol::auth::ClusterSecret>,
    /// `--users-file`: clients must log in as one of these users, and each
    /// request is checked against the user's role. `None`: anyone who
    /// reaches the door may read and write.
    pub users: Option<std::sync::Arc<crate::users::Users>>,
    /// `--tls-cert`, `--tls-key`, `--tls-ca`: TLS on every door (HTTPS on
    /// the HTTP door), and
    /// with a CA, on the links to replicas (verified by it, this
    /// balancer's certificate presented). `None`: plain TCP.
    pub tls: Option<std::sync::Arc<semikv_protocol::tls::Tls>>,
    /// The network the links to replicas connect over (the client door's
    /// listener is given to [`crate::run`] bound): the operating system's
    /// TCP, or a simulated one.
    pub net: semikv_protocol::net::Net,
    /// `--read-consistency`: the level of reads that name none (a client
    /// connection may choose its own).
    pub read_consistency: semikv_protocol::Consistency,
    /// What the balancer counts (`/metrics` with `--http`): shared by
    /// everything that holds this configuration.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// Default [`Config::max_client_output`]: room for a pipeline of 32 reads
/// of the largest value, far above what a client that reads needs.
pub const DEFAULT_MAX_CLIENT_OUTPUT: usize = 256 * 1024 * 1024;

impl Config {
    /// The defaults of `semikv-lb` for these replicas: heartbeat 100 ms, down
    /// after 3 misses, 1 sync replica, 2 s sync timeout, `session` reads.
    pub fn new(replicas: Vec<String>) -> Config {
        let mut config = Config {
            replicas,
            heartbeat: Duration::from_millis(100),
            down_after: 3,
            sync_replicas: 1,
            sync_timeout: Duration::from_millis(2000),
            write_wait: Duration::ZERO,
            election_wait: Duration::ZERO,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_connections: 10_000,
            frame_timeout: semikv_protocol::codec::DEFAULT_FRAME_TIMEOUT,
            max_client_output: DEFAULT_MAX_CLIENT_OUTPUT,
            max_buffered_input: semikv_protocol::budget::DEFAULT_READ_BUDGET,
            idle_timeout: None,
            cluster_secret: None,
            users: None,
            tls: None,
            net: semikv_protocol::net::Net::Tokio,
            read_consistency: semikv_protocol::Consistency::Session,
            metrics: std::sync::Arc::default(),
        };
        config.derive_waits();
        config
    }

    /// Recomputes `election_wait` (2 × heartbeat × down_after, at most 3 s)
    /// and `write_wait` (enough for one failover) from the other fields.
    pub fn derive_waits(&mut self) {
        let detect = self.heartbeat.saturating_mul(self.down_after.max(1));
        self.election_wait = detect.saturating_mul(2).min(MAX_ELECTION_WAIT);
        self.write_wait = (detect + self.election_wait.saturating_mul(2))
            .max(Duration::from_secs(1))
            .min(Duration::from_secs(5));
    }

    /// Timeout of a write sent to the leader: its sync timeout plus slack.
    pub fn write_timeout(&self) -> Duration {
        self.sync_timeout + Duration::from_secs(3)
    }

    /// Timeout of a read or admin request sent to a replica.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(3)
    }
}
