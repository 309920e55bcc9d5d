//! The HTTP doors (`--http`, issue #20) in front of and beside three real
//! replicas, through a real third-party HTTP client (`ureq`) and, for what
//! no client sends (hostile heads and lengths, a slowloris), plain sockets.
//! `/metrics` is read by a Prometheus text-format parser
//! (`prometheus-parse`), not ours.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use semikv_tests::wait::POLL;
use semikv_tests::{Cluster, Deadline};
use serde_json::json;

use crate::CONVERGE;

/// Bound on every request.
const IO: Duration = Duration::from_secs(15);

/// Three replicas and a balancer, all with `--http`.
struct Http {
    cluster: Cluster,
    rt: tokio::runtime::Runtime,
    /// `http://ADDR` of the balancer's door.
    lb: String,
    agent: ureq::Agent,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(IO))
        .build()
        .into()
}

impl Http {
    fn start(extra: &[&str]) -> Http {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut args = vec!["--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let cluster = rt
            .block_on(Cluster::with_balancer(3, &["--http", "127.0.0.1:0"], &args))
            .unwrap();
        let addr = cluster
            .balancer()
            .and_then(|b| b.http)
            .expect("the ready file names the HTTP door");
        let http = Http {
            cluster,
            rt,
            lb: format!("http://{addr}"),
            agent: agent(),
        };
        http.settle();
        http
    }

    fn settle(&self) {
        let r = self.rt.block_on(self.cluster.wait_steady(CONVERGE));
        self.cluster.explain(r).unwrap();
    }

    fn replica_url(&self, i: usize) -> String {
        let addr = self.cluster.replica(i).http.expect("replica has --http");
        format!("http://{addr}")
    }

    fn get(&self, path: &str) -> Answer {
        answer(self.agent.get(format!("{}{path}", self.lb)).call())
    }

    fn put(&self, path: &str, body: &[u8]) -> Answer {
        answer(self.agent.put(format!("{}{path}", self.lb)).send(body))
    }

    fn post(&self, path: &str, body: &str) -> Answer {
        answer(
            self.agent
                .post(format!("{}{path}", self.lb))
                .content_type("application/json")
                .send(body),
        )
    }

    fn delete(&self, path: &str) -> Answer {
        answer(self.agent.delete(format!("{}{path}", self.lb)).call())
    }

    /// The leader's index, from the balancer.
    fn leader(&self) -> usize {
        self.rt
            .block_on(self.cluster.balancer_leader())
            .unwrap()
            .expect("a leader")
    }
}

/// An answer read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn index(&self) -> u64 {
        self.headers
            .get("x-semikv-index")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut response = result.expect("the request got an answer");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

#[test]
fn keys_round_trip_as_json_raw_and_base64_and_the_seeds_paths_work() {
    let h = Http::start(&[]);
    let put = h.put("/v1/kv/greeting", b"hello world");
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json()["key"], "greeting");
    assert!(put.index() > 0, "{:?}", put.headers);
    // Read-your-writes through the door, with no settle: the door is one
    // session.
    let got = h.get("/v1/kv/greeting");
    assert_eq!(got.status, 200);
    assert_eq!(
        got.json(),
        json!({"key": "greeting", "value": "hello world"})
    );
    assert!(got.index() >= put.index());
    let raw = h.get("/v1/kv/greeting?raw");
    assert_eq!(raw.body, b"hello world");
    assert_eq!(raw.headers["content-type"], "application/octet-stream");
    let accept = answer(
        h.agent
            .get(format!("{}/v1/kv/greeting", h.lb))
            .header("Accept", "application/octet-stream")
            .call(),
    );
    assert_eq!(accept.body, b"hello world");

    // Bytes that are not UTF-8, in the key (percent-encoded) and the value.
    let value = [0xff, 0x00, 0x10, b'x'];
    assert_eq!(h.put("/v1/kv/bin%FF%2Fkey", &value).status, 200);
    let got = h.get("/v1/kv/bin%FF%2Fkey").json();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(got["key_base64"], b64.encode(b"bin\xff/key"));
    assert_eq!(
        b64.decode(got["value_base64"].as_str().unwrap()).unwrap(),
        value
    );
    assert_eq!(h.get("/v1/kv/bin%FF%2Fkey?raw").body, value);

    // Several keys in one atomic write, a value in base64.
    let many = h.post(
        "/v1/kv",
        &json!({"a": "1", "b": {"base64": b64.encode([0xfe, 0x01])}}).to_string(),
    );
    assert_eq!(many.status, 200, "{}", many.text());
    assert_eq!(many.json()["written"], 2);
    assert_eq!(h.get("/v1/kv/a").json()["value"], "1");
    assert_eq!(h.get("/v1/kv/b?raw").body, [0xfe, 0x01]);

    // The seeds' shapes.
    assert_eq!(h.post("/key", r#"{"foo": "bar"}"#).status, 200);
    assert_eq!(h.get("/key/foo").json(), json!({"foo": "bar"}));
    let deleted = h.delete("/key/foo");
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.json()["deleted"], true);
    assert_eq!(h.get("/key/foo").status, 404);
    assert_eq!(h.delete("/v1/kv/foo").json()["deleted"], false);

    // Consistency levels as a query parameter, and a position to read at.
    for level in ["stale", "session", "linearizable", "bounded:1000"] {
        let got = h.get(&format!("/v1/kv/greeting?consistency={level}&after=1"));
        assert_eq!(got.status, 200, "{level}: {}", got.text());
    }

    // Errors: each with its code and a reason.
    let missing = h.get("/v1/kv/nobody");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "no such key");
    for (path, says) in [
        ("/v1/kv/k?consistency=psychic", "consistency"),
        ("/v1/kv/k?cosistency=stale", "unknown query parameter"),
        ("/v1/kv/k?after=-1", "after"),
        ("/v1/kv/", "the key is empty"),
        ("/v2/kv/k", "no such path"),
    ] {
        let bad = h.get(path);
        assert!(
            bad.status == 400 || bad.status == 404 || bad.status == 405,
            "{path}: {}",
            bad.status
        );
        assert!(bad.text().contains(says), "{path}: {}", bad.text());
    }
    for body in [
        "not json",
        "[1, 2]",
        "{}",
        r#"{"k": 5}"#,
        r#"{"k": {"base64": "!!"}}"#,
    ] {
        let bad = h.post("/v1/kv", body);
        assert_eq!(bad.status, 400, "{body}: {}", bad.text());
        assert!(bad.json()["error"].is_string());
    }
    let huge = vec![b'x'; semikv_protocol::DEFAULT_MAX_VALUE_LEN + 1];
    let refused = h.put("/v1/kv/huge", &huge);
    assert_eq!(refused.status, 413, "{}", refused.text());
    assert_eq!(h.get("/v1/kv/huge").status, 404, "nothing written");

    // The status is `semikv status --json`'s.
    let status = h.get("/v1/status").json();
    assert!(status["leader"].is_string(), "{status}");
    let rows = status["replicas"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        for field in [
            "id",
            "addr",
            "role",
            "healthy",
            "applied_index",
            "read_lag_ms",
        ] {
            assert!(row.get(field).is_some(), "{field} in {row}");
        }
    }
    assert_eq!(h.get("/healthz").status, 200);
}

#[test]
fn users_need_basic_credentials_and_their_role_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    let lines = [
        semikv_lb::users::line_for("writer", semikv_lb::users::UserRole::Write, "w-pw").unwrap(),
        semikv_lb::users::line_for("reader", semikv_lb::users::UserRole::Read, "r-pw").unwrap(),
        semikv_lb::users::line_for("scraper", semikv_lb::users::UserRole::Monitor, "m-pw").unwrap(),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let path = file.to_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut cluster = rt
        .block_on(Cluster::with_balancer(
            3,
            &[],
            &["--http", "127.0.0.1:0", "--users-file", &path],
        ))
        .unwrap();
    cluster.log_in_as("writer", "w-pw");
    let r = rt.block_on(cluster.wait_steady(CONVERGE));
    cluster.explain(r).unwrap();
    let lb = format!(
        "http://{}",
        cluster.balancer().and_then(|b| b.http).unwrap()
    );
    let agent = agent();
    let url = format!("{lb}/v1/kv/k");
    let anonymous = answer(agent.put(&url).send(&b"v"[..]));
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.headers["www-authenticate"].starts_with("Basic"));
    let basic = |user: &str, pw: &str| {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        format!("Basic {token}")
    };
    let wrong = answer(
        agent
            .put(&url)
            .header("Authorization", &basic("writer", "nope"))
            .send(&b"v"[..]),
    );
    assert_eq!(wrong.status, 401);
    let written = answer(
        agent
            .put(&url)
            .header("Authorization", &basic("writer", "w-pw"))
            .send(&b"v"[..]),
    );
    assert_eq!(written.status, 200, "{}", written.text());
    let denied = answer(
        agent
            .put(&url)
            .header("Authorization", &basic("reader", "r-pw"))
            .send(&b"w"[..]),
    );
    assert_eq!(denied.status, 403, "{}", denied.text());
    let read = answer(
        agent
            .get(&url)
            .header("Authorization", &basic("reader", "r-pw"))
            .call(),
    );
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["value"], "v");
    // The cluster's layout is for users too; the probes stay open but name
    // no replica.
    let get_as = |path: &str, auth: Option<&str>| {
        let request = agent.get(format!("{lb}{path}"));
        answer(match auth {
            Some(auth) => request.header("Authorization", auth).call(),
            None => request.call(),
        })
    };
    let addrs: Vec<String> = cluster
        .replica_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    for path in ["/v1/status", "/metrics"] {
        let anonymous = get_as(path, None);
        assert_eq!(anonymous.status, 401, "{path}");
        assert!(
            addrs.iter().all(|a| !anonymous.text().contains(a.as_str())),
            "{path} told a stranger: {}",
            anonymous.text()
        );
        let wrong = get_as(path, Some(&basic("scraper", "nope")));
        assert_eq!(wrong.status, 401, "{path}");
        for user in [("reader", "r-pw"), ("scraper", "m-pw")] {
            let seen = get_as(path, Some(&basic(user.0, user.1)));
            assert_eq!(seen.status, 200, "{path} as {}: {}", user.0, seen.text());
            assert!(seen.text().contains(&addrs[0]), "{path}: {}", seen.text());
        }
    }
    // The monitor role scrapes; it reads no key and writes none.
    let peek = get_as("/v1/kv/k", Some(&basic("scraper", "m-pw")));
    assert_eq!(peek.status, 403, "{}", peek.text());
    let ready = get_as("/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert!(
        addrs.iter().all(|a| !ready.text().contains(a.as_str())),
        "{}",
        ready.text()
    );
    assert_eq!(
        answer(agent.get(format!("{lb}/healthz")).call()).status,
        200
    );
    // The user is checked before a byte of the body is awaited: a client
    // without credentials announcing 8 MB it never sends is told at once.
    let mut s = raw(&lb);
    s.write_all(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 401");
}

/// The metrics the issue lists, by the name they are exposed under.
const BALANCER_METRICS: &[&str] = &[
    "semikv_lb_requests_total",
    "semikv_lb_request_duration_seconds",
    "semikv_lb_requests_in_flight",
    "semikv_lb_client_connections",
    "semikv_lb_client_connections_accepted_total",
    "semikv_lb_elections_total",
    "semikv_lb_failovers_total",
    "semikv_lb_election_duration_seconds",
    "semikv_lb_epoch",
    "semikv_lb_leader_id",
    "semikv_lb_replica_healthy",
    "semikv_lb_replica_leader",
    "semikv_lb_replica_applied_index",
    "semikv_lb_replica_lag_entries",
    "semikv_lb_replica_read_lag_seconds",
];

const REPLICA_METRICS: &[&str] = &[
    "semikv_replica_id",
    "semikv_replica_role",
    "semikv_replica_epoch",
    "semikv_replica_last_index",
    "semikv_replica_commit_index",
    "semikv_replica_applied_index",
    "semikv_replica_wal_entries_total",
    "semikv_replica_wal_fsyncs_total",
    "semikv_replica_wal_append_duration_seconds",
    "semikv_replica_wal_fsync_duration_seconds",
    "semikv_replica_wal_entries_per_fsync",
    "semikv_replica_snapshots_total",
    "semikv_replica_snapshot_size_bytes",
    "semikv_replica_snapshot_duration_seconds",
    "semikv_replica_store_bytes",
    "semikv_replica_keys",
    "semikv_replica_connections",
];

/// Metrics only a leader has (its followers' streams).
const LEADER_METRICS: &[&str] = &[
    "semikv_replica_follower_lag_entries",
    "semikv_replica_follower_lag_seconds",
    "semikv_replica_follower_connected",
];

/// One scrape, parsed.
struct Page {
    text: String,
    scrape: Scrape,
}

fn scrape(agent: &ureq::Agent, base: &str) -> Page {
    let got = answer(agent.get(format!("{base}/metrics")).call());
    assert_eq!(got.status, 200);
    assert!(got.headers["content-type"].starts_with("text/plain"));
    let text = got.text();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    Page { text, scrape }
}

impl Page {
    fn names(&self) -> BTreeSet<String> {
        self.scrape
            .samples
            .iter()
            .map(|s| s.metric.clone())
            .collect()
    }

    /// The sum of the values of `metric` whose labels include `labels`.
    fn sum(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => 0.0,
            })
            .sum()
    }

    /// Every histogram's buckets rise with their bound and end at `+Inf`
    /// with its `_count`.
    fn check_histograms(&self) {
        for sample in &self.scrape.samples {
            let Value::Histogram(buckets) = &sample.value else {
                continue;
            };
            assert!(!buckets.is_empty(), "{}", sample.metric);
            for pair in buckets.windows(2) {
                assert!(pair[0].less_than < pair[1].less_than, "{}", sample.metric);
                assert!(
                    pair[0].count <= pair[1].count,
                    "{} not cumulative",
                    sample.metric
                );
            }
            let last = buckets.last().unwrap();
            assert!(last.less_than.is_infinite(), "{}", sample.metric);
            let labels: Vec<(&str, &str)> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let count = self.sum(&format!("{}_count", sample.metric), &labels);
            assert_eq!(last.count, count, "{} +Inf vs _count", sample.metric);
        }
    }
}

#[test]
fn metrics_are_listed_move_with_traffic_and_count_one_failover_per_kill() {
    let h = Http::start(&[]);
    let before = scrape(&h.agent, &h.lb);
    let names = before.names();
    for metric in BALANCER_METRICS {
        assert!(
            names.contains(*metric),
            "{metric} missing:\n{}",
            before.text
        );
    }
    assert!(
        before.scrape.samples.len() < 500,
        "{} series",
        before.scrape.samples.len()
    );
    before.check_histograms();
    let leader = h.leader();
    for i in 0..3 {
        let page = scrape(&h.agent, &h.replica_url(i));
        let names = page.names();
        for metric in REPLICA_METRICS {
            assert!(names.contains(*metric), "replica {i}: {metric} missing");
        }
        if i == leader {
            for metric in LEADER_METRICS {
                assert!(names.contains(*metric), "leader: {metric} missing");
            }
            assert_eq!(page.sum("semikv_replica_role", &[("role", "leader")]), 1.0);
        }
        page.check_histograms();
        assert!(page.scrape.samples.len() < 500);
    }

    // Traffic through two doors moves the counters by at least as much.
    for i in 0..20 {
        assert_eq!(h.put(&format!("/v1/kv/m{i}"), b"v").status, 200);
        assert_eq!(h.get(&format!("/v1/kv/m{i}")).status, 200);
    }
    let mut client = h.rt.block_on(h.cluster.connect_balancer()).unwrap();
    for i in 0..10 {
        let r = h.rt.block_on(client.set(format!("s{i}"), "v")).unwrap();
        assert!(matches!(r, semikv_protocol::Reply::Written { .. }), "{r:?}");
    }
    let after = scrape(&h.agent, &h.lb);
    after.check_histograms();
    let moved = |labels: &[(&str, &str)]| {
        after.sum("semikv_lb_requests_total", labels)
            - before.sum("semikv_lb_requests_total", labels)
    };
    assert!(moved(&[("door", "http"), ("op", "set"), ("outcome", "ok")]) >= 20.0);
    assert!(moved(&[("door", "http"), ("op", "get"), ("outcome", "ok")]) >= 20.0);
    assert!(moved(&[("door", "semikv"), ("op", "set"), ("outcome", "ok")]) >= 10.0);
    let timed = after.sum("semikv_lb_request_duration_seconds", &[("op", "set")])
        - before.sum("semikv_lb_request_duration_seconds", &[("op", "set")]);
    assert!(timed >= 30.0, "{timed}");
    assert!(after.sum("semikv_lb_client_connections", &[("door", "semikv")]) >= 1.0);
    let leader_page = scrape(&h.agent, &h.replica_url(leader));
    assert!(leader_page.sum("semikv_replica_wal_entries_total", &[]) >= 30.0);
    assert!(leader_page.sum("semikv_replica_keys", &[]) >= 30.0);

    // A kill -9 of the leader, and of a follower so that the failover
    // waits (an election needs 2 of 3 answers) and its window can be seen
    // however fast failover is: /readyz says 503 until the follower is
    // back, then 200 again, and the failover counter moves by exactly one.
    let failovers = after.sum("semikv_lb_failovers_total", &[]);
    let follower = (leader + 1) % 3;
    let mut h = h;
    h.cluster.kill_replica(leader).unwrap();
    h.cluster.kill_replica(follower).unwrap();
    let deadline = Deadline::new(CONVERGE, "/readyz to say 503 after the kill");
    loop {
        let ready = h.get("/readyz");
        if ready.status == 503 {
            assert_eq!(ready.json()["ready"], false);
            assert!(ready.json()["reason"].is_string());
            break;
        }
        assert!(!deadline.expired(), "still ready: {}", ready.text());
        std::thread::sleep(POLL);
    }
    let r = h.rt.block_on(h.cluster.restart_replica(follower));
    h.cluster.explain(r).unwrap();
    let deadline = Deadline::new(CONVERGE, "/readyz to say 200 after the failover");
    loop {
        let ready = h.get("/readyz");
        if ready.status == 200 {
            assert_eq!(ready.json()["ready"], true);
            break;
        }
        assert!(!deadline.expired(), "never ready again: {}", ready.text());
        std::thread::sleep(POLL);
    }
    let later = scrape(&h.agent, &h.lb);
    assert_eq!(later.sum("semikv_lb_failovers_total", &[]), failovers + 1.0);
    assert!(later.sum("semikv_lb_election_duration_seconds", &[]) >= 2.0);
    let new_leader = h.leader();
    assert_ne!(new_leader, leader);
    assert_eq!(
        later.sum("semikv_lb_leader_id", &[]),
        f64::from(h.cluster.replica(new_leader).id)
    );
    let down = h.cluster.replica(leader).addr.to_string();
    assert_eq!(
        later.sum("semikv_lb_replica_healthy", &[("replica", &down)]),
        0.0
    );
    // A replica's own readiness: the new leader is ready.
    let ready = answer(
        h.agent
            .get(format!("{}/readyz", h.replica_url(new_leader)))
            .call(),
    );
    assert_eq!(ready.status, 200, "{}", ready.text());
}

/// The metric names the dashboard and the scrape example use exist.
#[test]
fn the_grafana_dashboard_and_scrape_config_name_only_real_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/semikv.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&parsed, &mut exprs);
    assert!(exprs.len() >= 8, "{} queries", exprs.len());
    let scrape_config =
        std::fs::read_to_string(root.join("deploy/prometheus/prometheus.yml")).unwrap();
    assert!(scrape_config.contains("metrics_path: /metrics"));

    let h = Http::start(&[]);
    assert_eq!(h.put("/v1/kv/k", b"v").status, 200);
    let mut known = BTreeSet::new();
    for page in [
        scrape(&h.agent, &h.lb),
        scrape(&h.agent, &h.replica_url(h.leader())),
    ] {
        for line in page.text.lines().filter(|l| !l.starts_with('#')) {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            known.insert(name);
        }
    }
    let mut used = BTreeMap::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            used.entry(name).or_insert_with(|| expr.clone());
        }
    }
    assert!(!used.is_empty());
    for (name, expr) in &used {
        assert!(known.contains(name), "{name} (in {expr}) is not exposed");
    }
    for name in metric_names(&scrape_config) {
        assert!(
            known.contains(&name),
            "{name} (in prometheus.yml) is not exposed"
        );
    }
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(fields) => {
            for (k, v) in fields {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `semikv_...` names in a PromQL expression or a config.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("semikv_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

/// What the PUT loop of the failover test saw.
#[derive(Debug, Default)]
struct Puts {
    /// Per key, the highest value a PUT of it got 200 for.
    acked: HashMap<String, u64>,
    sent: u64,
    ok: usize,
    statuses: BTreeMap<u16, usize>,
}

#[test]
fn a_leader_killed_under_a_put_loop_loses_no_write_that_got_200() {
    let mut h = Http::start(&[]);
    let puts = Arc::new(Mutex::new(Puts::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (lb, puts, stop) = (h.lb.clone(), puts.clone(), stop.clone());
        std::thread::spawn(move || {
            let agent = agent();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let key = format!("f{}", seq % 16);
                puts.lock().unwrap().sent = seq;
                let got = agent
                    .put(format!("{lb}/v1/kv/{key}"))
                    .send(seq.to_string().as_bytes());
                let mut p = puts.lock().unwrap();
                match got {
                    Ok(mut response) => {
                        let status = response.status().as_u16();
                        let _ = response.body_mut().read_to_vec();
                        *p.statuses.entry(status).or_default() += 1;
                        if status == 200 {
                            p.ok += 1;
                            let best = p.acked.entry(key).or_default();
                            *best = (*best).max(seq);
                        }
                    }
                    Err(_) => *p.statuses.entry(0).or_default() += 1,
                }
            }
        })
    };
    let wait_ok = |n: usize, what: &str| {
        let deadline = Deadline::new(CONVERGE, what);
        let start = puts.lock().unwrap().ok;
        while puts.lock().unwrap().ok < start + n {
            assert!(!deadline.expired(), "{what}: {:?}", puts.lock().unwrap());
            std::thread::sleep(POLL);
        }
    };
    wait_ok(100, "100 PUTs answered 200 before the kill");
    let leader = h.leader();
    h.cluster.kill_replica(leader).unwrap();
    let killed = Instant::now();
    wait_ok(50, "50 PUTs answered 200 after the kill");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let puts = Arc::into_inner(puts).unwrap().into_inner().unwrap();
    eprintln!(
        "PUT loop through the HTTP door over a kill -9: {} answered 200 of {} sent, statuses {:?}, {:?} since the kill",
        puts.ok,
        puts.sent,
        puts.statuses,
        killed.elapsed()
    );
    for status in puts.statuses.keys() {
        assert!(
            [200, 503].contains(status),
            "only 200 or 503 are expected: {:?}",
            puts.statuses
        );
    }
    for (key, acked) in &puts.acked {
        let got = h.get(&format!("/v1/kv/{key}?consistency=linearizable"));
        assert_eq!(got.status, 200, "{key}: {}", got.text());
        let seq: u64 = got.json()["value"].as_str().unwrap().parse().unwrap();
        assert!(
            seq >= *acked,
            "{key} holds {seq}, below the 200 for {acked}"
        );
        assert!(seq <= puts.sent, "{key} holds {seq}, never sent");
    }
}

#[test]
fn no_leader_is_503_with_retry_after_and_not_ready() {
    let mut h = Http::start(&["--heartbeat-ms", "50"]);
    for i in 0..3 {
        h.cluster.kill_replica(i).unwrap();
    }
    let deadline = Deadline::new(CONVERGE, "the balancer to see the replicas gone");
    loop {
        let ready = h.get("/readyz");
        if ready.status == 503 {
            break;
        }
        assert!(!deadline.expired());
        std::thread::sleep(POLL);
    }
    let put = h.put("/v1/kv/k", b"v");
    assert_eq!(put.status, 503, "{}", put.text());
    assert!(put.headers.contains_key("retry-after"), "{:?}", put.headers);
    assert_eq!(put.json()["outcome"], "not applied");
    assert_eq!(h.get("/healthz").status, 200, "alive all the same");
}

/// A raw connection to `addr` with bounded reads.
fn raw(addr: &str) -> TcpStream {
    let addr: SocketAddr = addr.trim_start_matches("http://").parse().unwrap();
    let s = TcpStream::connect_timeout(&addr, IO).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Everything the server sends until it closes (or 30 s pass).
fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn hostile_http_costs_one_connection() {
    let h = Http::start(&[]);
    assert_eq!(h.put("/v1/kv/k", b"v").status, 200);
    // A slowloris: headers that never end, held open meanwhile.
    let mut slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = raw(&h.lb);
            s.write_all(b"GET /v1/kv/k HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    // 10 GB announced: refused before a byte of it is read.
    let mut big = raw(&h.lb);
    big.write_all(b"PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\nabc")
        .unwrap();
    let started = Instant::now();
    let said = read_all(&mut big);
    assert!(said.starts_with("HTTP/1.1 413"), "{said}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Headers of a megabyte.
    let mut heavy = raw(&h.lb);
    let _ = heavy.write_all(
        format!(
            "GET /v1/kv/k HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(1 << 20)
        )
        .as_bytes(),
    );
    let said = read_all(&mut heavy);
    assert!(
        said.is_empty() || said.starts_with("HTTP/1.1 431"),
        "{said}"
    );
    // A client that pipelines reads of a 4 MiB value and takes none of the
    // answers: cut off once an answer has waited for the write timeout,
    // long before the 80 MiB it asked for.
    let big = vec![b'v'; 4 << 20];
    assert_eq!(h.put("/v1/kv/four", &big).status, 200);
    let mut greedy = raw(&h.lb);
    let asks = "GET /v1/kv/four?raw HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20);
    greedy.write_all(asks.as_bytes()).unwrap();
    let greedy_since = Instant::now();
    // Garbage.
    let mut junk = raw(&h.lb);
    junk.write_all(b"\x16\x03\x01\x00\xff\xff garbage\r\n\r\n")
        .unwrap();
    let said = read_all(&mut junk);
    assert!(
        said.is_empty() || said.starts_with("HTTP/1.1 400"),
        "{said}"
    );
    // Meanwhile everyone else is served.
    let got = h.get("/v1/kv/k");
    assert_eq!(got.status, 200);
    assert_eq!(
        h.get("/v1/kv/big").status,
        404,
        "nothing of the 10 GB written"
    );
    // The slowloris connections are closed by the header timeout.
    let started = Instant::now();
    for s in &mut slow {
        let said = read_all(s);
        assert!(
            said.is_empty() || said.starts_with("HTTP/1.1 408"),
            "{said}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    // The greedy reader was cut off: what it gets is what sat in the
    // sockets' buffers, not its 80 MiB. Not reading for longer than the
    // write timeout (10 s, and the 1 s watch) is the very behaviour under
    // test, so this wait is the stimulus, not a synchronisation.
    std::thread::sleep(Duration::from_secs(15).saturating_sub(greedy_since.elapsed()));
    let mut taken = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match greedy.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => taken += n,
        }
    }
    assert!(taken < 40 << 20, "the greedy client got {taken} bytes");
    // The door still serves.
    assert_eq!(h.get("/v1/kv/k").status, 200);
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let json = ["--log-format", "json"];
    let cluster = rt
        .block_on(Cluster::with_balancer(3, &json, &json))
        .unwrap();
    let r = rt.block_on(cluster.wait_steady(CONVERGE));
    cluster.explain(r).unwrap();
    let mut files = vec![cluster.dir().join("lb.stderr")];
    for i in 0..3 {
        let data = &cluster.replica(i).data_dir;
        let mut name = data.file_name().unwrap().to_os_string();
        name.push(".stderr");
        files.push(data.with_file_name(name));
    }
    for file in files {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // The harness's own marker line first.
        let lines: Vec<&str> = text.lines().skip(1).filter(|l| !l.is_empty()).collect();
        assert!(!lines.is_empty(), "{}: no log line", file.display());
        for line in lines {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", file.display()));
            for field in ["timestamp", "level", "message", "target"] {
                assert!(event.get(field).is_some(), "{field} in {line}");
            }
        }
    }
}
