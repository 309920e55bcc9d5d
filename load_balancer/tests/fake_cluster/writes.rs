//! Forwarded writes: answered by id, NotLeader, lost connections and
//! deadlines, each answered exactly once and never resent.

use crate::support::*;

/// In-flight slots of a [`WriteHarness`] client.
const SLOTS: usize = 64;

/// A client's answer sink that queues what the link hands it.
#[derive(Debug)]
struct QueuedAnswers(tokio::sync::mpsc::Sender<Answer>);

impl AnswerSink for QueuedAnswers {
    fn deliver(&self, answer: Answer) {
        self.0.try_send(answer).expect("room for every slot");
    }
}

/// A replica link to one fake, and the client side its forwarded writes
/// answer: a port, in-flight slots and the health loop's kick.
struct WriteHarness {
    link: ReplicaLink,
    broken_rx: tokio::sync::mpsc::Receiver<usize>,
    port: Arc<ClientPort>,
    answers: tokio::sync::mpsc::Receiver<Answer>,
    slots: Arc<tokio::sync::Semaphore>,
    kick: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

/// The slot [`WriteHarness`] gives its link.
const HARNESS_SLOT: usize = 3;

impl WriteHarness {
    /// A link to `fake` that has not connected yet.
    fn new(fake: &Fake) -> WriteHarness {
        let (broken_tx, broken_rx) = tokio::sync::mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let kick = Arc::new(tokio::sync::Notify::new());
        let link = ReplicaLink::new(
            HARNESS_SLOT,
            fake.addr.to_string(),
            1 << 20,
            None,
            None,
            Duration::from_secs(5),
            broken_tx,
            kick.clone(),
            shutdown.clone(),
            tasks.clone(),
        );
        let (answers_tx, answers) = tokio::sync::mpsc::channel(SLOTS + 1);
        let (retry, _) = tokio::sync::mpsc::channel(SLOTS);
        WriteHarness {
            link,
            broken_rx,
            port: Arc::new(ClientPort::new(
                Arc::new(QueuedAnswers(answers_tx)),
                retry,
                semikv_lb::metrics::Meter::new(Arc::default(), semikv_lb::metrics::Door::Semikv),
            )),
            answers,
            slots: Arc::new(tokio::sync::Semaphore::new(SLOTS)),
            kick,
            shutdown,
            tasks,
        }
    }

    /// Opens the link's data connection (a ping travels on it).
    async fn open(&self) {
        assert_eq!(self.link.request(Op::Ping, T).await.unwrap(), Reply::Pong);
    }

    fn write(&self, id: u64, op: Op) -> ForwardWrite {
        ForwardWrite {
            port: self.port.clone(),
            tag: Tag(id),
            op,
            slot: self.slots.clone().try_acquire_owned().unwrap(),
        }
    }

    /// Forwards `op` as the client's request `id`; it must be sent.
    fn forward(&self, id: u64, op: Op, deadline: Duration) {
        if let Err(back) = self.link.forward_write(self.write(id, op), deadline) {
            panic!("write {:?} not sent on an open connection", back.tag);
        }
    }

    /// The next answer handed to the client, as a response under the
    /// client's id. Holding a slot is in its type.
    async fn answer(&mut self) -> Response {
        let answer = timeout(T, self.answers.recv()).await.unwrap().unwrap();
        match answer {
            Answer::One {
                tag,
                reply,
                slot: _,
            } => Response {
                id: RequestId(tag.0),
                reply,
            },
            other => panic!("expected one write's answer: {other:?}"),
        }
    }

    /// Whether the health loop was asked for a round (takes the request).
    fn kicked(&self) -> bool {
        use futures::FutureExt;
        self.kick.notified().now_or_never().is_some()
    }

    /// Checks that nothing more is ever answered: once our own port is
    /// dropped the queue closes only when the link holds no answer either.
    async fn no_more_answers(mut self) {
        drop(self.port);
        match timeout(T, self.answers.recv()).await.unwrap() {
            None => {}
            Some(answer) => panic!("answered again: {answer:?}"),
        }
        assert_eq!(self.slots.available_permits(), SLOTS, "a slot never freed");
        self.shutdown.cancel();
        self.tasks.close();
        timeout(T, self.tasks.wait()).await.unwrap();
    }
}

fn set_op(k: &str, v: &str) -> Op {
    Op::Set {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
    }
}

fn is_indeterminate(reply: &Reply, why: &str) -> bool {
    matches!(reply, Reply::Error(ErrorReply::Indeterminate { reason }) if reason.contains(why))
}

#[tokio::test]
async fn forwarded_writes_need_an_open_connection_and_are_answered_by_id() {
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    let mut h = WriteHarness::new(&a);
    // No data connection yet: handed back, certainly unsent, for the
    // router's own path (which connects).
    let back = h
        .link
        .forward_write(h.write(1000, set_op("k", "v")), T)
        .unwrap_err();
    assert_eq!(back.tag, Tag(1000));
    assert_eq!(back.op, set_op("k", "v"));
    drop(back);
    h.open().await;
    for i in 0..40 {
        h.forward(i, set_op(&format!("k{i}"), &format!("v{i}")), T);
    }
    h.forward(
        40,
        Op::Delete {
            key: Bytes::from_static(b"k0"),
        },
        T,
    );
    let mut ids = std::collections::HashSet::new();
    let mut indexes = std::collections::HashSet::new();
    for _ in 0..41 {
        let r = h.answer().await;
        assert!(ids.insert(r.id.0), "answered twice: {:?}", r.id);
        let Reply::Written { index } = r.reply else {
            panic!("{r:?}");
        };
        assert!(indexes.insert(index), "two writes answered with one index");
    }
    assert_eq!(ids, (0..41).collect());
    {
        let a = a.s();
        assert_eq!(a.sets_seen, 40, "the unsent write was sent, or one twice");
        assert_eq!(a.map.len(), 39);
        assert_eq!(a.map.get(&b"k7"[..]).map(|v| &v[..]), Some(&b"v7"[..]));
    }
    assert!(!h.kicked(), "acknowledged writes kicked the health loop");
    h.no_more_answers().await;
}

#[tokio::test]
async fn a_forwarded_write_refused_as_not_leader_is_unavailable_and_kicks() {
    let a = Fake::start(1, NodeRole::Follower, 1, 0).await;
    let mut h = WriteHarness::new(&a);
    h.open().await;
    h.forward(1, set_op("k", "v"), T);
    h.forward(
        2,
        Op::Delete {
            key: Bytes::from_static(b"k"),
        },
        T,
    );
    for _ in 0..2 {
        let r = h.answer().await;
        match r.reply {
            Reply::Error(ErrorReply::Unavailable {
                retry_after_ms,
                reason,
            }) => {
                assert!(retry_after_ms > 0);
                assert!(reason.contains("leader changed"), "{reason}");
            }
            other => panic!("NotLeader was not made Unavailable: {other:?}"),
        }
    }
    assert!(h.kicked(), "the health loop was not told");
    h.no_more_answers().await;
}

#[tokio::test]
async fn forwarded_writes_lost_with_their_connection_are_indeterminate_once_never_resent() {
    const N: u64 = 20;
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    {
        let mut a = a.s();
        a.hang_writes = true;
        a.hang_up_at_sets = Some(N);
    }
    let mut h = WriteHarness::new(&a);
    h.open().await;
    for i in 0..N {
        h.forward(i, set_op(&format!("k{i}"), "v"), T);
    }
    let mut ids = std::collections::HashSet::new();
    for _ in 0..N {
        let r = h.answer().await;
        assert!(ids.insert(r.id.0), "answered twice: {:?}", r.id);
        assert!(is_indeterminate(&r.reply, "broke"), "{:?}", r.reply);
    }
    assert!(h.kicked(), "the health loop was not told");
    assert_eq!(
        timeout(T, h.broken_rx.recv()).await.unwrap(),
        Some(HARNESS_SLOT)
    );
    // The replica is still up: the link reconnects, and only the new write
    // goes out on the new connection.
    {
        let mut a = a.s();
        a.hang_writes = false;
        a.hang_up_at_sets = None;
    }
    h.open().await;
    h.forward(100, set_op("after", "v"), T);
    let r = h.answer().await;
    assert_eq!(r.id, RequestId(100));
    assert!(matches!(r.reply, Reply::Written { .. }), "{r:?}");
    assert_eq!(a.s().sets_seen, N + 1, "a write was sent twice");
    h.no_more_answers().await;
}

#[tokio::test]
async fn a_forwarded_write_past_its_deadline_is_indeterminate() {
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    a.s().hang_writes = true;
    let mut h = WriteHarness::new(&a);
    h.open().await;
    h.forward(1, set_op("k", "v"), Duration::from_millis(150));
    let r = h.answer().await;
    assert_eq!(r.id, RequestId(1));
    assert!(is_indeterminate(&r.reply, "in time"), "{:?}", r.reply);
    // The link lives on: a late answer would find nothing to answer.
    assert_eq!(h.link.request(Op::Ping, T).await.unwrap(), Reply::Pong);
    assert_eq!(a.s().sets_seen, 1);
    h.no_more_answers().await;
}

/// A leader `a` and a follower `b` behind a balancer, with one write
/// acknowledged (so a's data connection is open and writes are forwarded);
/// returns the sets a has seen so far.
async fn leader_with_open_link() -> (Fake, Fake, Balancer, Client, u64) {
    let a = Fake::start(1, NodeRole::Leader, 2, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 2, 10).await;
    let lb = Balancer::start(config(&[&a, &b])).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "warm", "up").await;
    let seen = a.s().sets_seen;
    (a, b, lb, client, seen)
}

#[tokio::test]
async fn writes_the_leader_refuses_as_not_leader_are_unavailable() {
    let (a, b, lb, mut client, seen) = leader_with_open_link().await;
    a.s().refuse_writes = true;
    let mut ids = std::collections::HashSet::new();
    for i in 0..10 {
        ids.insert(client.send(set_op(&format!("k{i}"), "v")).await);
    }
    while !ids.is_empty() {
        let r = client.recv().await;
        assert!(ids.remove(&r.id), "unknown or repeated id");
        assert!(
            matches!(
                &r.reply,
                Reply::Error(ErrorReply::Unavailable { retry_after_ms, .. }) if *retry_after_ms > 0
            ),
            "{:?}",
            r.reply
        );
    }
    assert_eq!(a.s().sets_seen, seen + 10);
    assert_eq!(b.s().sets_seen, 0, "a refused write went elsewhere");
    lb.stop().await;
}

#[tokio::test]
async fn writes_in_flight_when_the_leaders_connection_breaks_are_indeterminate_once() {
    const N: u64 = 30;
    let (a, b, lb, mut client, seen) = leader_with_open_link().await;
    {
        let mut a = a.s();
        a.hang_writes = true;
        a.hang_up_at_sets = Some(seen + N);
    }
    let mut ids = std::collections::HashSet::new();
    for i in 0..N {
        ids.insert(client.send(set_op(&format!("k{i}"), "v")).await);
    }
    while !ids.is_empty() {
        let r = client.recv().await;
        assert!(ids.remove(&r.id), "unknown or repeated id");
        assert!(is_indeterminate(&r.reply, "broke"), "{:?}", r.reply);
    }
    // Nothing else was queued for the client: the next answer is the ping's.
    let ping = client.send(Op::Ping).await;
    let r = client.recv().await;
    assert_eq!(
        (r.id, r.reply),
        (ping, Reply::Pong),
        "a write answered twice"
    );
    {
        let mut a = a.s();
        a.hang_writes = false;
        a.hang_up_at_sets = None;
    }
    // a is still the leader; writes reach it on a new connection.
    let mut attempts = 0;
    let deadline = Instant::now() + T;
    loop {
        attempts += 1;
        if matches!(client.set("after", "v").await, Reply::Written { .. }) {
            break;
        }
        assert!(Instant::now() < deadline, "writes never succeeded again");
    }
    assert_eq!(
        a.s().sets_seen,
        seen + N + attempts,
        "a write was sent twice"
    );
    assert_eq!(b.s().sets_seen, 0, "a lost write was sent elsewhere");
    lb.stop().await;
}

#[tokio::test]
async fn writes_the_leader_never_answers_are_indeterminate_after_the_write_timeout() {
    let a = Fake::start(1, NodeRole::Leader, 2, 10).await;
    let b = Fake::start(2, NodeRole::Follower, 2, 10).await;
    let mut cfg = config(&[&a, &b]);
    // The write deadline is the sync timeout plus slack (3 s).
    cfg.sync_timeout = Duration::from_millis(10);
    let lb = Balancer::start(cfg).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "warm", "up").await;
    let seen = a.s().sets_seen;
    a.s().hang_writes = true;
    let mut ids = std::collections::HashSet::new();
    for i in 0..5 {
        ids.insert(client.send(set_op(&format!("k{i}"), "v")).await);
    }
    let mut timed_out = 0;
    while !ids.is_empty() {
        let r = client.recv().await;
        assert!(ids.remove(&r.id), "unknown or repeated id");
        // The first past its deadline is failed "in time"; the link then
        // closes the silent connection (SILENT_LINK), and a write sent a
        // little later, not yet due, is failed as broken with it: both
        // say the write may or may not have happened, which is the point.
        assert!(
            is_indeterminate(&r.reply, "in time") || is_indeterminate(&r.reply, "broke"),
            "{:?}",
            r.reply
        );
        timed_out += usize::from(is_indeterminate(&r.reply, "in time"));
    }
    assert!(timed_out >= 1, "none failed by its deadline");
    assert_eq!(a.s().sets_seen, seen + 5);
    assert_eq!(b.s().sets_seen, 0);
    assert!(is_leader_at(&a, 2), "the slow leader was replaced");
    lb.stop().await;
}

#[tokio::test]
async fn pipelined_writes_and_reads_are_answered_with_their_own_replies() {
    const N: usize = 100;
    let (a, b, lb, mut client, seen) = leader_with_open_link().await;
    for f in [&a, &b] {
        let mut s = f.s();
        for i in 0..N {
            s.map
                .insert(Bytes::from(format!("r{i}")), Bytes::from(format!("v{i}")));
        }
    }
    // What each id must be answered with: Some(value) for reads, None for
    // writes.
    let mut expect = HashMap::new();
    for i in 0..N {
        let w = client
            .send(set_op(&format!("w{i}"), &format!("x{i}")))
            .await;
        expect.insert(w, None);
        let r = client
            .send(Op::Get {
                key: Bytes::from(format!("r{i}")),
            })
            .await;
        expect.insert(r, Some(Bytes::from(format!("v{i}"))));
    }
    let mut indexes = std::collections::HashSet::new();
    while !expect.is_empty() {
        let r = client.recv().await;
        let Some(want) = expect.remove(&r.id) else {
            panic!("unknown or repeated id {:?}", r.id);
        };
        match (want, r.reply) {
            (None, Reply::Written { index }) => {
                assert!(indexes.insert(index), "two writes with one index")
            }
            (Some(v), Reply::Value(got)) => assert_eq!(got, Some(v)),
            (want, got) => panic!("{:?}: wanted {want:?}, got {got:?}", r.id),
        }
    }
    {
        let a = a.s();
        assert_eq!(a.sets_seen, seen + N as u64);
        for i in [0, N / 2, N - 1] {
            let v = a.map.get(format!("w{i}").as_bytes()).cloned();
            assert_eq!(v, Some(Bytes::from(format!("x{i}"))));
        }
    }
    lb.stop().await;
}

/// A data connection that goes silent (a flow a middlebox black-holes, a
/// wedged replica) while the control connection answers every health
/// check: once a write on it is past its deadline and nothing has come
/// back for a second, the link drops it, and the next write goes through a
/// new one instead of timing out on the dead one too.
#[tokio::test]
async fn a_silent_data_connection_is_dropped_and_writes_flow_again() {
    let (a, _b, lb) = leader_and_follower(|c| c.sync_timeout = Duration::from_millis(200)).await;
    let mut client = Client::connect(lb.addr).await;
    set_until_written(&mut client, "k", "v").await;
    a.s().wedge_on_set = true;
    let wedged = client.set("k", "v2").await;
    assert!(
        matches!(wedged, Reply::Error(ErrorReply::Indeterminate { .. })),
        "{wedged:?}"
    );
    a.s().wedge_on_set = false;
    let again = client.set("k", "v3").await;
    assert!(
        matches!(again, Reply::Written { .. }),
        "the write went to the silent connection: {again:?}"
    );
    lb.stop().await;
}
