//! Hostile peers: connections that misbehave on purpose at the wire level,
//! byte by byte, through a [`RawConn`], and frames built by hand, so a test
//! trusts nothing of the codec under test for the bytes it sends.
//!
//! A frame, as [`semikv_protocol::frame`] defines it and [`hand_frame`]
//! builds it:
//!
//! ```text
//! len: u32 BE | crc32: u32 BE (IEEE, of the payload) | payload: len bytes
//! ```
//!
//! What a hostile peer may get back is the same on every port (guarantee
//! 5): a `Reject` and a closed connection, or an error reply; never an
//! acknowledgement of something its role may not ask for.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use semikv_protocol::{
    Epoch, Fence, Hello, LogIndex, Message, Op, ReplicaId, Reply, Request, RequestId, Response,
    Role, Subscribe, WireError,
};

use crate::client::{encode, RawConn};
use crate::workload::Rng;

/// Bytes of garbage [`HostilePeer::RandomBytes`] sends.
pub const RANDOM_BYTES: usize = 512;

/// Time between two bytes of [`trickle_hello`].
pub const TRICKLE_PERIOD: Duration = Duration::from_secs(1);

/// One hostile peer's behaviour; [`HostilePeer::run`] plays it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostilePeer {
    /// [`RANDOM_BYTES`] seeded random bytes instead of a handshake.
    RandomBytes,
    /// A frame header announcing a payload far past any limit.
    OversizedLength,
    /// Half a `Hello` frame, then EOF.
    CutFrame,
    /// A `Hello` with a wrong magic.
    WrongMagic,
    /// A `Hello` with a protocol version nobody speaks.
    WrongVersion,
    /// A client's handshake, then a `Fence` (an admin request) at an epoch
    /// that would wedge the cluster if it were obeyed.
    AdminFromClient,
    /// A client's handshake, then a `Subscribe` (a follower's message) at
    /// such an epoch.
    ReplicationFromClient,
}

impl HostilePeer {
    /// Every behaviour, in declaration order.
    pub const ALL: [HostilePeer; 7] = [
        HostilePeer::RandomBytes,
        HostilePeer::OversizedLength,
        HostilePeer::CutFrame,
        HostilePeer::WrongMagic,
        HostilePeer::WrongVersion,
        HostilePeer::AdminFromClient,
        HostilePeer::ReplicationFromClient,
    ];

    /// Plays this peer against `addr` (`seed` drives the random bytes).
    ///
    /// # Errors
    /// Connecting or writing failed, the peer was not closed (possibly
    /// after a `Reject`) within the I/O timeout, it got anything but
    /// `Reject`s, or its admin or replication message was answered with
    /// anything but an error reply, a `Reject` or a close.
    pub async fn run(self, addr: SocketAddr, seed: u64) -> anyhow::Result<()> {
        let mut rng = Rng::new(seed);
        let mut conn = RawConn::connect(addr).await?;
        let hello = |role| Message::Hello(Hello::new(role, None));
        match self {
            HostilePeer::RandomBytes => {
                // Truncation to a byte is the point: any byte will do.
                let bytes: Vec<u8> = (0..RANDOM_BYTES).map(|_| rng.next_u64() as u8).collect();
                conn.send_bytes(&bytes).await?;
            }
            HostilePeer::OversizedLength => {
                conn.send_bytes(&[0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0])
                    .await?;
            }
            HostilePeer::CutFrame => {
                let frame = encode(&hello(Role::Client))?;
                conn.send_bytes(&frame[..frame.len() / 2]).await?;
                conn.shutdown_write().await?;
            }
            HostilePeer::WrongMagic | HostilePeer::WrongVersion => {
                let mut h = Hello::new(Role::Client, None);
                if self == HostilePeer::WrongMagic {
                    h.magic ^= 0xdead_beef;
                } else {
                    h.version = h.version.wrapping_add(1000);
                }
                conn.send(&Message::Hello(h)).await?;
            }
            HostilePeer::AdminFromClient | HostilePeer::ReplicationFromClient => {
                conn.send(&Message::Hello(Hello::new(Role::Client, None)))
                    .await?;
                match conn.recv().await? {
                    Some(Message::Welcome(_)) => {}
                    // A replica with a cluster secret, a balancer with
                    // users, or a TLS port refuses a plain client at once:
                    // even better.
                    Some(Message::Reject(
                        WireError::AuthFailed { .. } | WireError::TlsRequired,
                    ))
                    | None => return Ok(()),
                    other => bail!("{self:?}: the handshake was answered with {other:?}"),
                }
                let wedging = Epoch::from_raw(u128::MAX / 2);
                let message = if self == HostilePeer::AdminFromClient {
                    Message::Request(Request {
                        id: RequestId(1),
                        op: Op::Fence(Fence { epoch: wedging }),
                    })
                } else {
                    subscribe(wedging, ReplicaId(99), LogIndex(0))
                };
                conn.send(&message).await?;
                // Either an error reply on a live connection, or a Reject
                // and a close; never a Node status (the fence obeyed).
                return match conn.recv().await? {
                    Some(Message::Response(Response {
                        reply: Reply::Error(_),
                        ..
                    }))
                    | Some(Message::Reject(_))
                    | None => Ok(()),
                    other => bail!("{self:?} answered {other:?}"),
                };
            }
        }
        let frames = conn.recv_until_closed().await?;
        ensure!(
            frames.iter().all(|m| matches!(m, Message::Reject(_))),
            "{self:?} got {frames:?}"
        );
        Ok(())
    }
}

/// A slow peer: connects to `addr` and sends a client's `Hello` one byte
/// every [`TRICKLE_PERIOD`], for at most `within` (then it stops, the
/// connection still open until it returns). The peer hanging up on it ends
/// it early, which is allowed.
///
/// # Errors
/// Connecting failed, or the `Hello` did not encode.
pub async fn trickle_hello(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let mut conn = RawConn::connect(addr).await?;
    let frame = encode(&Message::Hello(Hello::new(Role::Client, None)))?;
    let end = Instant::now() + within;
    for b in frame.iter() {
        if Instant::now() >= end {
            break;
        }
        // A write failing means the peer hung up on the slow peer: allowed.
        if conn.send_bytes(&[*b]).await.is_err() {
            break;
        }
        // Pacing the fault, not waiting for a condition.
        tokio::time::sleep(TRICKLE_PERIOD).await;
    }
    Ok(())
}

/// `payload` as one frame, built by the test's own code (length, IEEE
/// CRC-32, payload: see the module doc), so it can carry a payload the
/// codec would never produce.
///
/// # Errors
/// `payload` is longer than a frame's length field can say.
pub fn hand_frame(payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let len = u32::try_from(payload.len())
        .with_context(|| format!("a payload of {} bytes", payload.len()))?;
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32(payload).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// A `Subscribe` as a follower `follower` with no history would send:
/// `last_index` entries, the last at epoch zero, asking `epoch`'s leader
/// for a stream.
pub fn subscribe(epoch: Epoch, follower: ReplicaId, last_index: LogIndex) -> Message {
    Message::Subscribe(Subscribe {
        epoch,
        follower,
        last_index,
        last_epoch: Epoch::from_raw(0),
        history: Vec::new(),
    })
}

/// IEEE CRC-32, bitwise: the test does not trust the code under test for it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
