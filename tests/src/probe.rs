//! Writes aimed at a fault, recorded as
//! [`checker::Event`](crate::checker::Event)s beside a workload's: a
//! [`Probe`] that writes through the balancer at a fixed interval until a
//! write is acknowledged again (when did writes flow after the fault?),
//! [`write_once`], one write straight to a replica (does a deposed leader
//! acknowledge anything?), and [`read_once`], one read straight to a
//! replica (does it serve a value it must not have?).
//!
//! A workload's clients run one request at a time, so right after a fault
//! their first new writes wait behind ones stuck at the failed leader; the
//! probe sends on its own pipelined connection, so its figure does not
//! depend on how long those take to fail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use semikv_protocol::{Message, Op, Reply, RequestId, Role};
use tokio::sync::oneshot;

use crate::checker::{Action, Event, Outcome};
use crate::client::Client;
use crate::workload::{classify, error_kind, reply_kind, Tally};

/// A prober: see [`Probe::run`]. Its record accumulates over runs.
#[derive(Debug)]
pub struct Probe {
    /// Client id of its events.
    pub client: usize,
    /// Time between two writes while none has been acknowledged.
    pub interval: Duration,
    /// Bound on one run, answers included.
    pub timeout: Duration,
    /// Everything it sent and heard, kept when a run fails too (a write
    /// whose answer never came is recorded with an unknown outcome).
    pub events: Vec<Event>,
    /// Its writes, acknowledged and failed.
    pub tally: Tally,
}

/// A probe write sent and not yet answered.
struct InFlight {
    key: Bytes,
    value: Bytes,
    start: Instant,
}

impl Probe {
    /// A probe recording as `client`, writing every `interval`, each run
    /// bounded by `timeout`.
    pub fn new(client: usize, interval: Duration, timeout: Duration) -> Probe {
        Probe {
            client,
            interval,
            timeout,
            events: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// Connects to `addr` and writes `{tag}-{n}` (value the same) every
    /// [`Probe::interval`] on that one connection until one is acknowledged,
    /// sending the moment it was on `first_ack`; then waits for the answers
    /// to all it sent.
    ///
    /// # Errors
    /// Connecting failed, the connection broke, or the run took longer than
    /// [`Probe::timeout`]. What was recorded stays in [`Probe::events`].
    pub async fn run(
        &mut self,
        addr: SocketAddr,
        tag: &str,
        first_ack: oneshot::Sender<Instant>,
    ) -> anyhow::Result<()> {
        let mut in_flight = HashMap::new();
        let result = self.exchange(addr, tag, first_ack, &mut in_flight).await;
        // Unanswered: sent, so they may still take effect.
        let end = Instant::now();
        for (_, w) in in_flight {
            self.events.push(Event {
                client: self.client,
                key: w.key,
                action: Action::Set(w.value),
                start: w.start,
                end,
                outcome: Outcome::Unknown,
                detail: "probe stopped before the answer".into(),
            });
            self.tally.record(Some("unanswered"));
        }
        result
    }

    async fn exchange(
        &mut self,
        addr: SocketAddr,
        tag: &str,
        first_ack: oneshot::Sender<Instant>,
        in_flight: &mut HashMap<RequestId, InFlight>,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut client = tokio::time::timeout_at(deadline, Client::connect(addr, Role::Client))
            .await
            .map_err(|_| anyhow::anyhow!("probe: no connection within {:?}", self.timeout))??;
        let mut first_ack = Some(first_ack);
        let mut tick = tokio::time::interval(self.interval);
        let mut n = 0u64;
        while first_ack.is_some() || !in_flight.is_empty() {
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            if wait.is_zero() {
                anyhow::bail!(
                    "probe: {} writes unanswered after {:?}",
                    in_flight.len(),
                    self.timeout
                );
            }
            tokio::select! {
                _ = tick.tick(), if first_ack.is_some() => {
                    let key = Bytes::from(format!("{tag}-{n}"));
                    n += 1;
                    let op = Op::Set { key: key.clone(), value: key.clone() };
                    let start = Instant::now();
                    let id = client.send(op).await?;
                    in_flight.insert(id, InFlight { value: key.clone(), key, start });
                }
                message = client.recv_message(wait) => {
                    let response = match message? {
                        Some(Message::Response(r)) => r,
                        Some(other) => anyhow::bail!("probe: got {}", other.name()),
                        None => anyhow::bail!("probe: the connection closed"),
                    };
                    let w = in_flight.remove(&response.id).ok_or_else(|| {
                        anyhow::anyhow!("probe: an answer to request {} it did not send", response.id)
                    })?;
                    let end = Instant::now();
                    let acked = matches!(response.reply, Reply::Written { .. });
                    self.push(w, end, response.reply);
                    if acked {
                        if let Some(tx) = first_ack.take() {
                            // The receiver may have given up: nothing to tell.
                            let _ = tx.send(end);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, w: InFlight, end: Instant, reply: Reply) {
        let kind = reply_kind(&reply);
        let (action, outcome, detail) = classify(Action::Set(w.value), reply);
        self.tally.record((outcome != Outcome::Ok).then_some(kind));
        self.events.push(Event {
            client: self.client,
            key: w.key,
            action,
            start: w.start,
            end,
            outcome,
            detail,
        });
    }
}

/// One `Set key value` on a fresh connection to `addr` (a replica
/// directly, say), recorded as `client`'s event, with how it failed in a
/// word (`None`: acknowledged). A connection that cannot be made sent
/// nothing: the write failed for sure.
pub async fn write_once(
    addr: SocketAddr,
    client: usize,
    key: Bytes,
    value: Bytes,
) -> (Event, Option<&'static str>) {
    let start = Instant::now();
    let (action, outcome, detail, kind) = match Client::connect(addr, Role::Client).await {
        Err(e) => (
            Action::Set(value),
            Outcome::Failed,
            format!("connect error: {e:#}"),
            "connect",
        ),
        Ok(mut c) => match c.set(key.clone(), value.clone()).await {
            Ok(reply) => {
                let kind = reply_kind(&reply);
                let (action, outcome, detail) = classify(Action::Set(value), reply);
                (action, outcome, detail, kind)
            }
            Err(e) => (
                Action::Set(value),
                Outcome::Unknown,
                format!("connection error: {e:#}"),
                error_kind(&e),
            ),
        },
    };
    let event = Event {
        client,
        key,
        action,
        start,
        end: Instant::now(),
        outcome,
        detail,
    };
    (event, (outcome != Outcome::Ok).then_some(kind))
}

/// One `Get key` on a fresh connection to `addr` (a replica directly,
/// say), recorded as `client`'s event. A read changes nothing, so one that
/// got no answer (no connection, a broken one) is recorded as failed: it
/// returned nothing the checker could judge.
pub async fn read_once(addr: SocketAddr, client: usize, key: Bytes) -> Event {
    let start = Instant::now();
    let reply = async {
        let mut c = Client::connect(addr, Role::Client).await?;
        c.get(key.clone()).await
    }
    .await;
    let end = Instant::now();
    let (action, outcome, detail) = match reply {
        Ok(reply) => classify(Action::Get(None), reply),
        Err(e) => (Action::Get(None), Outcome::Failed, format!("error: {e:#}")),
    };
    Event {
        client,
        key,
        action,
        start,
        end,
        outcome,
        detail,
    }
}
