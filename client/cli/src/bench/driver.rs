//! One benchmark connection driven by one task: the requests of all its
//! lanes are encoded into one buffer and written together, and the answers
//! are judged as they are read, with no task, channel, oneshot or timer per
//! request. Through the general-purpose [`semikv_client::Client`] (a task
//! per lane, a oneshot and a timeout per request) the load generator spent
//! more CPU per request than the balancer it was measuring.

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{FutureExt, StreamExt};
use semikv_protocol::transport::{ReadHalf, WriteHalf};
use semikv_protocol::{ErrorReply, Message, MessageCodec, Reply, RequestId};
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, Sleep};
use tokio_util::codec::FramedRead;

use super::config::Stop;
use super::model::{judge, outcome_unknown, parse_value, LaneKeys, LaneModel, ReadCheck, Rng};
use super::report::{error_kind, micros, record, Latencies, Tally, MAX_EXAMPLES};
use super::run::{Phase, RunState};
use super::wire;
use semikv_client::{handshake, ClientError};

/// Longest wait between reconnection attempts.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// Answers taken from the read buffer per wake-up before the lanes that got
/// them send again: bounds the work between two writes.
const MAX_DRAIN: usize = 1024;

/// The socket of a driven connection.
struct Socket {
    reader: FramedRead<ReadHalf, MessageCodec>,
    writer: WriteHalf,
    /// Encoded requests not yet written.
    unwritten: BytesMut,
}

/// A request on the wire.
#[derive(Debug, Clone, Copy)]
struct SentRequest {
    id: u64,
    /// The lane-local key number.
    i: u64,
    /// The value's sequence number, for a set.
    set: Option<u64>,
    /// For a get, the key's settled value when it was sent: it cannot change
    /// while the request is in flight (the key is the lane's, and the lane
    /// has one request in flight), and comparing the answer with it spares
    /// a cold model lookup per read (the bench's largest own cost).
    expected: Option<u64>,
    at: Instant,
}

/// Where one lane stands.
#[derive(Debug, Clone, Copy)]
enum LaneStatus {
    /// Ready to send its next request.
    Idle,
    /// Waiting for the answer to a request.
    InFlight(SentRequest),
    /// Honouring an `Unavailable` hint until then.
    Parked(Instant),
    /// Finished the current phase.
    Done,
}

/// One lane: a private slice of the client's keys with at most one request
/// in flight, so the value each read should return is known.
struct Lane {
    keys: LaneKeys,
    /// How many keys the lane has (numbered `0..key_count`).
    key_count: u64,
    model: LaneModel,
    rng: Rng,
    seq: u64,
    /// The next key the prefill writes.
    prefilled: u64,
    status: LaneStatus,
}

/// One client connection and its lanes.
pub(super) struct Driver {
    shared: Arc<RunState>,
    client: u32,
    lanes: Vec<Lane>,
    /// The results of the prefill and of the measured run.
    tallies: Tallies,
    latencies: Latencies,
    /// Request ids are `n * lanes + lane`, so an answer finds its lane.
    next_request: u64,
    /// No later than the deadline of every request in flight and the end of
    /// every parked lane's wait (`None`: nothing to wait for): the one timer
    /// fires then and the lanes are looked over.
    wake: Option<Instant>,
    /// What every key of this client begins with: `bench-RUN-CLIENT-`.
    key_prefix: String,
    /// The key of the request being encoded.
    key: String,
    /// The value of the set being encoded.
    value: String,
    /// The requests [`Driver::send_idle`] is sending, kept for its buffer.
    picks: Vec<PickedRequest>,
}

/// A request a lane picked, not yet encoded.
#[derive(Debug, Clone, Copy)]
struct PickedRequest {
    /// The lane's index.
    index: usize,
    /// The lane-local key number.
    i: u64,
    /// The value's sequence number, for a set.
    set: Option<u64>,
    /// For a get, the key's settled value (see [`SentRequest::expected`]).
    expected: Option<u64>,
}

/// A connection's results, one tally per phase.
struct Tallies {
    /// The prefill's results: only its count is ever shown.
    prefill: Tally,
    /// The measured run's results.
    run: Tally,
}

impl Tallies {
    /// The results of `phase`.
    fn of(&self, phase: Phase) -> &Tally {
        match phase {
            Phase::Prefill => &self.prefill,
            Phase::Run => &self.run,
        }
    }

    /// The results of `phase`, to count in.
    fn of_mut(&mut self, phase: Phase) -> &mut Tally {
        match phase {
            Phase::Prefill => &mut self.prefill,
            Phase::Run => &mut self.run,
        }
    }
}

/// What ended a connection, counted against the requests it had in flight.
fn lost(reason: impl Into<String>) -> ClientError {
    ClientError::ConnectionLost {
        reason: reason.into(),
    }
}

impl Driver {
    /// The driver of client number `client`, its lanes not yet started.
    pub(super) fn new(shared: Arc<RunState>, client: u32) -> Driver {
        let config = &shared.config;
        let pipeline = u64::from(config.pipeline);
        let lanes = (0..config.pipeline)
            .map(|lane| {
                let keys = (config.keyspace - u64::from(lane)).div_ceil(pipeline);
                Lane {
                    keys: LaneKeys {
                        pipeline,
                        lane: u64::from(lane),
                    },
                    key_count: keys,
                    model: LaneModel::with_keys(usize::try_from(keys).unwrap_or(0)),
                    rng: Rng::new(
                        config.seed
                            ^ (u64::from(client) << 32 | u64::from(lane))
                                .wrapping_mul(0x2545_f491_4f6c_dd1d),
                    ),
                    seq: 0,
                    prefilled: 0,
                    status: LaneStatus::Idle,
                }
            })
            .collect();
        let mut key_prefix = String::new();
        let _ = write!(key_prefix, "bench-{:06x}-{client}-", shared.run_id);
        Driver {
            shared,
            client,
            lanes,
            tallies: Tallies {
                prefill: Tally::new(),
                run: Tally::new(),
            },
            latencies: (None, None),
            next_request: 0,
            wake: None,
            key_prefix,
            key: String::new(),
            value: String::new(),
            picks: Vec::new(),
        }
    }

    /// Prefills (if asked), meets the other clients at the start line, runs
    /// the measured phase, and returns its results.
    pub(super) async fn run(mut self) -> (Tally, Latencies) {
        let mut socket = None;
        if self.shared.config.prefill {
            self.drive(Phase::Prefill, &mut socket).await;
        }
        self.shared.prefilled.wait().await;
        let _ = self.shared.go.subscribe().wait_for(|go| *go).await;
        for lane in &mut self.lanes {
            lane.status = LaneStatus::Idle;
        }
        self.wake = None;
        self.drive(Phase::Run, &mut socket).await;
        (self.tallies.run, self.latencies)
    }

    /// Runs `phase` until every lane is done with it, reconnecting as needed.
    async fn drive(&mut self, phase: Phase, socket: &mut Option<Socket>) {
        let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::ZERO));
        loop {
            let Some(open) = socket.as_mut() else {
                match self.connect().await {
                    Some(opened) => *socket = Some(opened),
                    None => {
                        // The run ended while no connection could be made.
                        for lane in &mut self.lanes {
                            lane.status = LaneStatus::Done;
                        }
                        return;
                    }
                }
                continue;
            };
            self.send_idle(phase, &mut open.unwritten);
            self.publish(phase);
            if self
                .lanes
                .iter()
                .all(|l| matches!(l.status, LaneStatus::Done))
            {
                return;
            }
            // Most of the time the socket takes it all at once: no wake-up
            // spent on waiting to be writable.
            if !open.unwritten.is_empty() {
                match open.writer.write(&open.unwritten).now_or_never() {
                    Some(Ok(n)) => {
                        let _ = open.unwritten.split_to(n);
                    }
                    None => {}
                    Some(Err(e)) => {
                        self.lose(phase, &lost(format!("write failed: {e}")));
                        *socket = None;
                        continue;
                    }
                }
            }
            let mut wrote = 0;
            if let Some(at) = self.wake {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            let ended = tokio::select! {
                first = open.reader.next() => {
                    let mut next = Some(first);
                    let mut taken = 0;
                    let now = Instant::now();
                    let mut ended = None;
                    while let Some(message) = next.take() {
                        match message {
                            Some(Ok(Message::Response(response))) => {
                                self.answer(phase, response.id, response.reply, now);
                            }
                            Some(Ok(Message::Reject(error))) => {
                                ended = Some(format!("server rejected the connection: {error}"));
                            }
                            Some(Ok(other)) => {
                                ended = Some(format!("unexpected {} message from server", other.name()));
                            }
                            Some(Err(e)) => ended = Some(format!("protocol error: {e}")),
                            None => ended = Some("server closed the connection".to_string()),
                        }
                        taken += 1;
                        if ended.is_none() && taken < MAX_DRAIN {
                            next = open.reader.next().now_or_never();
                        }
                    }
                    ended
                }
                written = open.writer.write(&open.unwritten), if !open.unwritten.is_empty() => {
                    match written {
                        Ok(n) => {
                            wrote = n;
                            None
                        }
                        Err(e) => Some(format!("write failed: {e}")),
                    }
                }
                () = timer.as_mut(), if self.wake.is_some() => {
                    let now = Instant::now();
                    let expired = self.expire(phase, now);
                    // A request that waited its whole timeout while our own
                    // bytes could not be written: the connection is wedged.
                    (expired && !open.unwritten.is_empty())
                        .then(|| "writes blocked for the request timeout".to_string())
                }
            };
            let _ = open.unwritten.split_to(wrote);
            if let Some(reason) = ended {
                self.lose(phase, &lost(reason));
                *socket = None;
            }
        }
    }

    /// Opens the connection, retrying with backoff; `None` once the run is
    /// over (a run bounded by requests waits for the server as long as it
    /// takes).
    async fn connect(&self) -> Option<Socket> {
        let config = &self.shared.config;
        let mut backoff = Duration::from_millis(20);
        loop {
            match handshake(&config.addr, &config.client).await {
                Ok(h) => {
                    return Some(Socket {
                        reader: h.reader,
                        writer: h.writer.into_inner(),
                        unwritten: BytesMut::new(),
                    })
                }
                Err(_) => {
                    if matches!(config.stop, Stop::Duration(_)) && !self.shared.claim() {
                        return None;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                }
            }
        }
    }

    /// Encodes the next request of every idle lane into `out`.
    ///
    /// In two passes: every idle lane picks its request, then the picks are
    /// encoded. A pick's model lookup is a cache miss (hundreds of lanes
    /// come round in turn); in a short loop of independent lookups the CPU
    /// waits for several at once, where amid the encoding it waited for each.
    fn send_idle(&mut self, phase: Phase, out: &mut BytesMut) {
        let config = &self.shared.config;
        let weight = u64::from(config.set_weight) + u64::from(config.get_weight);
        let count = self.lanes.len() as u64;
        let timeout = config.client.request_timeout;
        let max = config.client.max_frame_len;
        // One clock read for the batch: it claims the requests and times them.
        let mut now = None;
        let mut picks = std::mem::take(&mut self.picks);
        picks.clear();
        for (index, lane) in self.lanes.iter_mut().enumerate() {
            if !matches!(lane.status, LaneStatus::Idle) {
                continue;
            }
            let (i, set) = match phase {
                Phase::Prefill if lane.prefilled < lane.key_count => {
                    lane.prefilled += 1;
                    lane.seq += 1;
                    (lane.prefilled - 1, Some(lane.seq))
                }
                Phase::Prefill => {
                    lane.status = LaneStatus::Done;
                    continue;
                }
                Phase::Run if !self.shared.claim_at(*now.get_or_insert_with(Instant::now)) => {
                    lane.status = LaneStatus::Done;
                    continue;
                }
                Phase::Run => {
                    let i = lane.rng.below(lane.key_count);
                    let set = (lane.rng.below(weight) < u64::from(config.set_weight)).then(|| {
                        lane.seq += 1;
                        lane.seq
                    });
                    (i, set)
                }
            };
            let expected = match set {
                Some(_) => None,
                None => lane.model.settled(i),
            };
            picks.push(PickedRequest {
                index,
                i,
                set,
                expected,
            });
        }
        for pick in &picks {
            let Some(lane) = self.lanes.get_mut(pick.index) else {
                continue;
            };
            let key = lane.keys.key_number(pick.i);
            wire::write_key(&mut self.key, &self.key_prefix, key);
            let id = self
                .next_request
                .wrapping_mul(count)
                .wrapping_add(pick.index as u64);
            self.next_request += 1;
            let encoded = match pick.set {
                Some(seq) => {
                    let size = config.value_size;
                    wire::write_value(&mut self.value, self.client, key, seq, size);
                    wire::encode_set(id, &self.key, &self.value, max, out)
                }
                None => wire::encode_get(id, &self.key, max, out),
            };
            if let Err(e) = encoded {
                // Not sent, so nothing to model; the settings make every
                // request of this lane too big, so it stops.
                self.tallies
                    .of_mut(phase)
                    .count_failure(error_kind(&ClientError::Encode(e)));
                lane.status = LaneStatus::Done;
                continue;
            }
            let at = *now.get_or_insert_with(Instant::now);
            lane.status = LaneStatus::InFlight(SentRequest {
                id,
                i: pick.i,
                set: pick.set,
                expected: pick.expected,
                at,
            });
            // No later than this deadline: a parked lane may have set a later
            // wake-up.
            let deadline = at + timeout;
            wake_by(&mut self.wake, deadline);
        }
        self.picks = picks;
    }

    /// Publishes this connection's counts for the progress line.
    fn publish(&self, phase: Phase) {
        let tally = self.tallies.of(phase);
        if let Some(counts) = usize::try_from(self.client)
            .ok()
            .and_then(|c| self.shared.counts.get(c))
        {
            counts.publish(phase, tally);
        }
    }

    /// Judges the answer `reply` to request `id`, received at `now`.
    fn answer(&mut self, phase: Phase, id: RequestId, reply: Reply, now: Instant) {
        let index = usize::try_from(id.0 % self.lanes.len() as u64).unwrap_or(usize::MAX);
        let Some(lane) = self.lanes.get_mut(index) else {
            return;
        };
        // An answer to a request already given up on (timed out) is late
        // news: the lane has moved on.
        let LaneStatus::InFlight(sent) = lane.status else {
            return;
        };
        if sent.id != id.0 {
            return;
        }
        lane.status = LaneStatus::Idle;
        let timed = phase == Phase::Run;
        let latency_us = micros(now.saturating_duration_since(sent.at));
        let result = match reply {
            Reply::Error(e) => Err(ClientError::Server(e)),
            other => Ok(other),
        };
        let tally = self.tallies.of_mut(phase);
        match result {
            Ok(Reply::Written { .. }) if sent.set.is_some() => {
                lane.model.written(sent.i, sent.set.unwrap_or_default());
                tally.ok += 1;
                if timed {
                    record(&mut self.latencies.0, latency_us);
                    self.shared.succeeded(true, now);
                }
            }
            Ok(Reply::Value(value)) if sent.set.is_none() => {
                tally.ok += 1;
                if timed {
                    record(&mut self.latencies.1, latency_us);
                    self.shared.succeeded(false, now);
                }
                let client = self.client;
                let key = lane.keys.key_number(sent.i);
                let got = value.as_deref().map(|v| parse_value(client, v));
                let check = match got {
                    // What `judge` would find fresh without a change.
                    Some(Some((seq, named))) if named == key && Some(seq) == sent.expected => {
                        ReadCheck::Fresh
                    }
                    None if sent.expected.is_none() => ReadCheck::Fresh,
                    got => judge(&mut lane.model, sent.i, key, got),
                };
                match check {
                    ReadCheck::Fresh => {}
                    ReadCheck::Stale => tally.stale_reads += 1,
                    ReadCheck::Wrong => {
                        tally.wrong_values += 1;
                        if tally.examples.len() < MAX_EXAMPLES {
                            let k = lane.keys.key_number(sent.i);
                            tally
                                .examples
                                .push(format!("client {client} key {k}: read {:?}", got.flatten()));
                        }
                    }
                }
            }
            Ok(_) => tally.count_failure("unexpected_reply"),
            Err(e) => {
                fail(lane, tally, sent, &e);
                if let ClientError::Server(ErrorReply::Unavailable { retry_after_ms, .. }) = &e {
                    // Honour the balancer's hint instead of hammering it.
                    let until = now + Duration::from_millis((*retry_after_ms).min(1000));
                    lane.status = LaneStatus::Parked(until);
                    wake_by(&mut self.wake, until);
                }
            }
        }
    }

    /// Fails every request in flight with `error` (the connection ended).
    fn lose(&mut self, phase: Phase, error: &ClientError) {
        let tally = self.tallies.of_mut(phase);
        for lane in &mut self.lanes {
            if let LaneStatus::InFlight(sent) = lane.status {
                fail(lane, tally, sent, error);
                lane.status = LaneStatus::Idle;
            }
        }
    }

    /// Times out the requests past their deadline and wakes the parked lanes
    /// whose wait is over, as of `now`; sets the next wake-up. Whether any
    /// request timed out.
    fn expire(&mut self, phase: Phase, now: Instant) -> bool {
        let timeout = self.shared.config.client.request_timeout;
        let tally = self.tallies.of_mut(phase);
        let mut expired = false;
        let mut wake: Option<Instant> = None;
        for lane in &mut self.lanes {
            let lane_wake = match lane.status {
                LaneStatus::InFlight(sent) if sent.at + timeout <= now => {
                    fail(lane, tally, sent, &ClientError::Timeout { after: timeout });
                    lane.status = LaneStatus::Idle;
                    expired = true;
                    None
                }
                LaneStatus::InFlight(sent) => Some(sent.at + timeout),
                LaneStatus::Parked(until) if until <= now => {
                    lane.status = LaneStatus::Idle;
                    None
                }
                LaneStatus::Parked(until) => Some(until),
                LaneStatus::Idle | LaneStatus::Done => None,
            };
            if let Some(at) = lane_wake {
                wake_by(&mut wake, at);
            }
        }
        self.wake = wake;
        expired
    }
}

/// Counts the failure of request `sent` of `lane`, and models a write whose
/// outcome it leaves unknown.
fn fail(lane: &mut Lane, tally: &mut Tally, sent: SentRequest, error: &ClientError) {
    if let (Some(seq), true) = (sent.set, outcome_unknown(error)) {
        lane.model.maybe_written(sent.i, seq);
    }
    tally.count_failure(error_kind(error));
}

/// Moves the wake-up `wake` to `at` if that is sooner, or sets it.
fn wake_by(wake: &mut Option<Instant>, at: Instant) {
    *wake = Some(wake.map_or(at, |w| w.min(at)));
}
