//! Golden byte vectors: the frozen wire encoding of every variant of every
//! wire enum, frame included.
//!
//! The vectors live in `tests/golden/messages.hex`, one frame per line:
//! `name  len  crc32  payload` (hex; header fields big-endian, payload
//! postcard). Each sample below must encode to exactly its line and the line
//! must decode back to exactly the sample. A change to any line is a protocol
//! version bump, so the file is never regenerated casually:
//! `SEMIKV_BLESS=1 cargo test -p semikv-protocol --test golden` rewrites it
//! from the samples, and the diff is reviewed by eye.
//!
//! Adding a variant or a field breaks the build here on purpose: the
//! coverage walker destructures every wire type exhaustively. Then add an arm,
//! a sample, and bless the new line only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use semikv_protocol::frame::{self, DEFAULT_MAX_FRAME_LEN, HEADER_LEN};
use semikv_protocol::*;
use serde::de::DeserializeOwned;
use tokio_util::codec::Decoder;

/// The frozen vectors, as checked in.
const GOLDEN: &str = include_str!("golden/messages.hex");

/// Bytes no text encoding would produce, to prove keys and values are raw.
const BINARY: &[u8] = &[0x00, 0xff, 0x80, 0x0a, 0x7f];

fn node_status(role: NodeRole) -> NodeStatus {
    NodeStatus {
        id: ReplicaId(1),
        role,
        epoch: Epoch::from_raw(7),
        last_index: LogIndex(300),
        last_epoch: Epoch::from_raw(6),
        commit_index: LogIndex(299),
        applied_index: LogIndex(298),
        leader: match role {
            NodeRole::Follower => Some("127.0.0.1:8082".to_string()),
            NodeRole::Idle | NodeRole::Leader => None,
        },
        followers: match role {
            NodeRole::Leader => vec![
                FollowerProgress {
                    id: ReplicaId(2),
                    match_index: LogIndex(300),
                    connected: true,
                },
                FollowerProgress {
                    id: ReplicaId(3),
                    match_index: LogIndex(128),
                    connected: false,
                },
            ],
            NodeRole::Idle | NodeRole::Follower => Vec::new(),
        },
    }
}

fn request(id: u64, op: Op) -> Message {
    Message::Request(Request {
        id: RequestId(id),
        op,
    })
}

fn response(id: u64, reply: Reply) -> Message {
    Message::Response(Response {
        id: RequestId(id),
        reply,
    })
}

fn reject(e: WireError) -> Message {
    Message::Reject(e)
}

fn error(e: ErrorReply) -> Message {
    response(9, Reply::Error(e))
}

/// One fixed message per variant (more where a nested enum needs it), named
/// as in the golden file. Values are distinctive so a swapped field shows.
fn samples() -> Vec<(&'static str, Message)> {
    vec![
        (
            "hello_client",
            Message::Hello(Hello::new(Role::Client, None)),
        ),
        (
            "hello_balancer",
            Message::Hello(Hello::new(Role::Balancer, None)),
        ),
        (
            "hello_replica",
            Message::Hello(Hello::new(Role::Replica, Some(ReplicaId(3)))),
        ),
        (
            "welcome_replica",
            Message::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                node: Some(ReplicaId(2)),
            }),
        ),
        (
            "welcome_balancer",
            Message::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                node: None,
            }),
        ),
        (
            "reject_frame_too_large",
            reject(WireError::FrameTooLarge {
                len: 0xffff_ffff,
                max: DEFAULT_MAX_FRAME_LEN as u64,
            }),
        ),
        ("reject_checksum", reject(WireError::ChecksumMismatch)),
        (
            "reject_undecodable",
            reject(WireError::Undecodable {
                reason: "bad".to_string(),
            }),
        ),
        (
            "reject_bad_magic",
            reject(WireError::BadMagic { got: 0xdead_beef }),
        ),
        (
            "reject_unsupported_version",
            reject(WireError::UnsupportedVersion {
                got: 2,
                supported: 1,
            }),
        ),
        (
            "reject_handshake_required",
            reject(WireError::HandshakeRequired),
        ),
        (
            "reject_wrong_role",
            reject(WireError::WrongRole {
                role: Role::Client,
                what: "promote".to_string(),
            }),
        ),
        (
            "reject_unexpected",
            reject(WireError::Unexpected {
                what: "ack".to_string(),
            }),
        ),
        (
            "request_get",
            request(
                1,
                Op::Get {
                    key: Bytes::from_static(b"k"),
                },
            ),
        ),
        (
            "request_set",
            request(
                u64::MAX,
                Op::Set {
                    key: Bytes::from_static(b"key"),
                    value: Bytes::from_static(BINARY),
                },
            ),
        ),
        (
            "request_delete",
            request(
                300,
                Op::Delete {
                    key: Bytes::from_static(BINARY),
                },
            ),
        ),
        ("request_ping", request(0, Op::Ping)),
        ("request_status", request(2, Op::Status)),
        (
            "request_promote",
            request(
                3,
                Op::Promote(Promote {
                    epoch: Epoch::from_raw(5),
                    sync_replicas: 1,
                    sync_timeout_ms: 2000,
                    async_fallback: true,
                }),
            ),
        ),
        (
            "request_follow",
            request(
                4,
                Op::Follow(Follow {
                    epoch: Epoch::from_raw(5),
                    leader: ReplicaId(1),
                    leader_addr: "127.0.0.1:8081".to_string(),
                }),
            ),
        ),
        (
            "request_fence",
            request(
                5,
                Op::Fence(Fence {
                    epoch: Epoch::from_raw(6),
                }),
            ),
        ),
        (
            "response_value_some",
            response(1, Reply::Value(Some(Bytes::from_static(BINARY)))),
        ),
        (
            "response_value_empty",
            response(1, Reply::Value(Some(Bytes::new()))),
        ),
        ("response_value_none", response(1, Reply::Value(None))),
        (
            "response_written",
            response(
                u64::MAX,
                Reply::Written {
                    index: LogIndex(1 << 40),
                },
            ),
        ),
        ("response_pong", response(0, Reply::Pong)),
        (
            "response_node_idle",
            response(2, Reply::Node(node_status(NodeRole::Idle))),
        ),
        (
            "response_node_leader",
            response(2, Reply::Node(node_status(NodeRole::Leader))),
        ),
        (
            "response_node_follower",
            response(2, Reply::Node(node_status(NodeRole::Follower))),
        ),
        (
            "response_cluster",
            response(
                2,
                Reply::Cluster(ClusterStatus {
                    leader: Some("127.0.0.1:8081".to_string()),
                    epoch: Epoch::from_raw(7),
                    replicas: vec![
                        ReplicaView {
                            id: Some(ReplicaId(1)),
                            addr: "127.0.0.1:8081".to_string(),
                            role: NodeRole::Leader,
                            healthy: true,
                            epoch: Epoch::from_raw(7),
                            last_index: LogIndex(300),
                            commit_index: LogIndex(299),
                            applied_index: LogIndex(299),
                            lag: 0,
                        },
                        ReplicaView {
                            id: None,
                            addr: "127.0.0.1:8082".to_string(),
                            role: NodeRole::Idle,
                            healthy: false,
                            epoch: Epoch::from_raw(0),
                            last_index: LogIndex(0),
                            commit_index: LogIndex(0),
                            applied_index: LogIndex(0),
                            lag: 300,
                        },
                    ],
                }),
            ),
        ),
        (
            "error_not_leader_known",
            error(ErrorReply::NotLeader {
                leader: Some("127.0.0.1:8081".to_string()),
            }),
        ),
        (
            "error_not_leader_unknown",
            error(ErrorReply::NotLeader { leader: None }),
        ),
        (
            "error_not_enough_replicas",
            error(ErrorReply::NotEnoughReplicas {
                acked: 0,
                required: 2,
            }),
        ),
        (
            "error_unavailable",
            error(ErrorReply::Unavailable {
                retry_after_ms: 250,
                reason: "failover".to_string(),
            }),
        ),
        (
            "error_indeterminate",
            error(ErrorReply::Indeterminate {
                reason: "leader lost".to_string(),
            }),
        ),
        (
            "error_invalid",
            error(ErrorReply::Invalid {
                reason: "empty key".to_string(),
            }),
        ),
        (
            "error_stale_epoch",
            error(ErrorReply::StaleEpoch {
                got: Epoch::from_raw(3),
                current: Epoch::from_raw(4),
            }),
        ),
        (
            "error_storage",
            error(ErrorReply::Storage {
                reason: "disk full".to_string(),
            }),
        ),
        (
            "subscribe",
            Message::Subscribe(Subscribe {
                epoch: Epoch::from_raw(5),
                follower: ReplicaId(2),
                last_index: LogIndex(10),
                last_epoch: Epoch::from_raw(4),
                history: vec![
                    EpochStart {
                        epoch: Epoch::from_raw(1),
                        start: LogIndex(1),
                    },
                    EpochStart {
                        epoch: Epoch::from_raw(4),
                        start: LogIndex(8),
                    },
                ],
            }),
        ),
        (
            "stream_start",
            Message::StreamStart(StreamStart {
                epoch: Epoch::from_raw(5),
                prefix: LogIndex(9),
            }),
        ),
        (
            "entries",
            Message::Entries(Entries {
                epoch: Epoch::from_raw(5),
                prev_index: LogIndex(9),
                entries: vec![
                    Entry {
                        index: LogIndex(10),
                        epoch: Epoch::from_raw(5),
                        op: WriteOp::Noop,
                    },
                    Entry {
                        index: LogIndex(11),
                        epoch: Epoch::from_raw(5),
                        op: WriteOp::Set {
                            key: Bytes::from_static(b"k"),
                            value: Bytes::from_static(BINARY),
                        },
                    },
                    Entry {
                        index: LogIndex(12),
                        epoch: Epoch::from_raw(5),
                        op: WriteOp::Delete {
                            key: Bytes::from_static(b"k"),
                        },
                    },
                ],
                commit_index: LogIndex(11),
            }),
        ),
        (
            "entries_heartbeat",
            Message::Entries(Entries {
                epoch: Epoch::from_raw(5),
                prev_index: LogIndex(12),
                entries: Vec::new(),
                commit_index: LogIndex(12),
            }),
        ),
        (
            "ack",
            Message::Ack(Ack {
                epoch: Epoch::from_raw(5),
                match_index: LogIndex(12),
            }),
        ),
        (
            "snapshot",
            Message::Snapshot(SnapshotChunk {
                epoch: Epoch::from_raw(5),
                last_index: LogIndex(12),
                last_epoch: Epoch::from_raw(5),
                history: vec![EpochStart {
                    epoch: Epoch::from_raw(5),
                    start: LogIndex(10),
                }],
                offset: 4096,
                data: Bytes::from_static(BINARY),
                done: true,
            }),
        ),
        (
            "stream_from",
            Message::StreamFrom(StreamFrom {
                epoch: Epoch::new(7, CoordinatorId(0x8f3a_9c21_d4e0_b7f6)),
                prefix: LogIndex(9),
                prefix_epoch: Epoch::new(6, CoordinatorId(1)),
                prefix_crc: Some(0xdead_beef),
            }),
        ),
        (
            "stream_from_compacted",
            Message::StreamFrom(StreamFrom {
                epoch: Epoch::new(7, CoordinatorId(0x8f3a_9c21_d4e0_b7f6)),
                prefix: LogIndex(0),
                prefix_epoch: Epoch::ZERO,
                prefix_crc: None,
            }),
        ),
        (
            "error_epoch_conflict",
            error(ErrorReply::EpochConflict {
                epoch: Epoch::new(u64::MAX, CoordinatorId(u64::MAX)),
                reason: "leads it".to_string(),
            }),
        ),
        (
            "error_diverged",
            error(ErrorReply::Diverged {
                reason: "index 9".to_string(),
            }),
        ),
        (
            "reject_too_many_conns",
            reject(WireError::TooManyConnections { max: 10_000 }),
        ),
        (
            "error_disk_full",
            error(ErrorReply::DiskFull {
                reason: "appending to wal/1.wal: No space left on device".to_string(),
            }),
        ),
        (
            "error_out_of_memory",
            error(ErrorReply::OutOfMemory {
                used: 1_073_741_000,
                limit: 1 << 30,
            }),
        ),
        (
            "snapshot_offer",
            Message::SnapshotOffer(SnapshotOffer {
                epoch: Epoch::new(7, CoordinatorId(0x8f3a_9c21_d4e0_b7f6)),
                last_index: LogIndex(4096),
                total_len: 123_456_789,
            }),
        ),
        (
            "response_node_report",
            response(
                2,
                Reply::NodeReport(Box::new(NodeReport {
                    status: node_status(NodeRole::Leader),
                    resources: Resources {
                        disk_full: Some("no space".to_string()),
                        memory_used: 5_000,
                        memory_limit: Some(1 << 20),
                    },
                    leading: Some(LeaderTerms {
                        sync_replicas: 1,
                        sync_timeout_ms: 5_000,
                        async_fallback: false,
                    }),
                })),
            ),
        ),
        (
            "response_cluster_report",
            response(
                3,
                Reply::ClusterReport(Box::new(ClusterReport {
                    status: ClusterStatus {
                        leader: Some("127.0.0.1:8081".to_string()),
                        epoch: Epoch::from_raw(7),
                        replicas: vec![
                            ReplicaView {
                                id: Some(ReplicaId(1)),
                                addr: "127.0.0.1:8081".to_string(),
                                role: NodeRole::Leader,
                                healthy: true,
                                epoch: Epoch::from_raw(7),
                                last_index: LogIndex(300),
                                commit_index: LogIndex(300),
                                applied_index: LogIndex(300),
                                lag: 0,
                            },
                            ReplicaView {
                                id: None,
                                addr: "127.0.0.1:8082".to_string(),
                                role: NodeRole::Idle,
                                healthy: false,
                                epoch: Epoch::ZERO,
                                last_index: LogIndex(0),
                                commit_index: LogIndex(0),
                                applied_index: LogIndex(0),
                                lag: 300,
                            },
                        ],
                    },
                    resources: vec![Some(Resources::default()), None],
                })),
            ),
        ),
        (
            "secure_hello",
            Message::SecureHello(SecureHello {
                hello: Hello::new(Role::Replica, Some(ReplicaId(2))),
                nonce: Nonce([0xa5; 32]),
            }),
        ),
        (
            "challenge",
            Message::Challenge(Challenge {
                nonce: Nonce([0x5a; 32]),
                mac: Mac([0x01; 32]),
            }),
        ),
        (
            "proof",
            Message::Proof(Proof {
                mac: Mac([0xfe; 32]),
            }),
        ),
        (
            "reject_auth_failed",
            reject(WireError::AuthFailed {
                reason: "wrong proof".to_string(),
            }),
        ),
        (
            "hello_auth",
            Message::HelloAuth(HelloAuth {
                hello: Hello::new(Role::Client, None),
                user: "alice".to_string(),
                password: "correct horse".to_string(),
            }),
        ),
        (
            "error_no_permission",
            error(ErrorReply::NoPermission {
                reason: "user alice (role read) may not set".to_string(),
            }),
        ),
        ("reject_tls_required", reject(WireError::TlsRequired)),
        (
            "request_cmd_set",
            request(
                40,
                Op::Command(Command::Set {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(BINARY),
                    cond: Cond::IfAbsent,
                    ttl: TtlChange::AfterMs(10_000),
                    get_old: true,
                }),
            ),
        ),
        (
            "request_cmd_set_xx_keep",
            request(
                41,
                Op::Command(Command::Set {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"v"),
                    cond: Cond::IfPresent,
                    ttl: TtlChange::Keep,
                    get_old: false,
                }),
            ),
        ),
        (
            "request_cmd_set_persist",
            request(
                42,
                Op::Command(Command::Set {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"v"),
                    cond: Cond::Always,
                    ttl: TtlChange::Persist,
                    get_old: false,
                }),
            ),
        ),
        (
            "request_cmd_mset",
            request(
                43,
                Op::Command(Command::MSet {
                    pairs: vec![
                        (Bytes::from_static(b"a"), Bytes::from_static(b"1")),
                        (Bytes::from_static(b"b"), Bytes::from_static(BINARY)),
                    ],
                    only_if_none_exist: true,
                }),
            ),
        ),
        (
            "request_cmd_delete",
            request(
                44,
                Op::Command(Command::Delete {
                    keys: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
                }),
            ),
        ),
        (
            "request_cmd_incr_by",
            request(
                45,
                Op::Command(Command::IncrBy {
                    key: Bytes::from_static(b"n"),
                    by: -3,
                }),
            ),
        ),
        (
            "request_cmd_append",
            request(
                46,
                Op::Command(Command::Append {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"tail"),
                }),
            ),
        ),
        (
            "request_cmd_get_del",
            request(
                47,
                Op::Command(Command::GetDel {
                    key: Bytes::from_static(b"k"),
                }),
            ),
        ),
        (
            "request_cmd_expire_at_gt",
            request(
                48,
                Op::Command(Command::Expire {
                    key: Bytes::from_static(b"k"),
                    ttl: TtlChange::At(UnixMillis(1_700_000_000_000)),
                    cond: ExpireCond::IfLater,
                }),
            ),
        ),
        (
            "request_cmd_expire_nx",
            request(
                49,
                Op::Command(Command::Expire {
                    key: Bytes::from_static(b"k"),
                    ttl: TtlChange::AfterMs(5),
                    cond: ExpireCond::IfNone,
                }),
            ),
        ),
        (
            "request_cmd_expire_xx",
            request(
                50,
                Op::Command(Command::Expire {
                    key: Bytes::from_static(b"k"),
                    ttl: TtlChange::Persist,
                    cond: ExpireCond::IfSome,
                }),
            ),
        ),
        (
            "request_cmd_expire_lt",
            request(
                51,
                Op::Command(Command::Expire {
                    key: Bytes::from_static(b"k"),
                    ttl: TtlChange::AfterMs(1),
                    cond: ExpireCond::IfEarlier,
                }),
            ),
        ),
        (
            "request_cmd_expire",
            request(
                52,
                Op::Command(Command::Expire {
                    key: Bytes::from_static(b"k"),
                    ttl: TtlChange::AfterMs(1000),
                    cond: ExpireCond::Always,
                }),
            ),
        ),
        (
            "request_cmd_get_ex",
            request(
                53,
                Op::Command(Command::GetEx {
                    key: Bytes::from_static(b"k"),
                    ttl: TtlChange::Keep,
                }),
            ),
        ),
        (
            "request_ttl",
            request(
                54,
                Op::Ttl {
                    key: Bytes::from_static(b"k"),
                },
            ),
        ),
        (
            "response_outcome",
            response(
                55,
                Reply::Outcome(Outcome {
                    index: LogIndex(77),
                    applied: true,
                    value: Some(Bytes::from_static(BINARY)),
                    int: -42,
                }),
            ),
        ),
        (
            "response_ttl_no_key",
            response(56, Reply::Ttl(KeyTtl::NoKey)),
        ),
        (
            "response_ttl_persistent",
            response(57, Reply::Ttl(KeyTtl::Persistent)),
        ),
        (
            "response_ttl_expires",
            response(
                58,
                Reply::Ttl(KeyTtl::Expires {
                    at: UnixMillis(1_700_000_000_000),
                    remaining_ms: 9_999,
                }),
            ),
        ),
        ("error_not_an_integer", error(ErrorReply::NotAnInteger)),
        ("error_overflow", error(ErrorReply::Overflow)),
        (
            "request_scan",
            request(
                59,
                Op::Scan(Scan {
                    cursor: 0x8000_0000_0000_0001,
                    count: 10,
                    pattern: Some(Bytes::from_static(b"user:*")),
                }),
            ),
        ),
        (
            "request_scan_all",
            request(
                60,
                Op::Scan(Scan {
                    cursor: 0,
                    count: 1000,
                    pattern: None,
                }),
            ),
        ),
        ("request_dbsize", request(61, Op::DbSize)),
        (
            "request_cmd_expire_xx_lt",
            request(
                65,
                Op::Command(Command::Expire {
                    key: Bytes::from_static(b"k"),
                    ttl: TtlChange::AfterMs(1),
                    cond: ExpireCond::IfSomeAndEarlier,
                }),
            ),
        ),
        (
            "response_keys",
            response(
                62,
                Reply::Keys(KeyPage {
                    keys: vec![Bytes::from_static(b"a"), Bytes::from_static(BINARY)],
                    cursor: 0x1234_5678_9abc_def0,
                }),
            ),
        ),
        (
            "response_keys_done",
            response(
                63,
                Reply::Keys(KeyPage {
                    keys: vec![],
                    cursor: 0,
                }),
            ),
        ),
        (
            "response_key_count",
            response(
                64,
                Reply::KeyCount(KeyCount {
                    keys: 1_000_000,
                    expiring: 42,
                }),
            ),
        ),
        (
            "entries_batch",
            Message::Entries(Entries {
                epoch: Epoch::from_raw(5),
                prev_index: LogIndex(12),
                entries: vec![Entry {
                    index: LogIndex(13),
                    epoch: Epoch::from_raw(5),
                    op: WriteOp::Batch(vec![
                        Mutation {
                            key: Bytes::from_static(b"a"),
                            value: Some(Bytes::from_static(BINARY)),
                            expires_at: Some(UnixMillis(1_700_000_000_000)),
                        },
                        Mutation {
                            key: Bytes::from_static(b"b"),
                            value: Some(Bytes::from_static(b"2")),
                            expires_at: None,
                        },
                        Mutation {
                            key: Bytes::from_static(b"c"),
                            value: None,
                            expires_at: None,
                        },
                    ]),
                }],
                commit_index: LogIndex(13),
            }),
        ),
        (
            "request_read_default",
            request(
                66,
                Op::Read(Read {
                    op: Box::new(Op::Get {
                        key: Bytes::from_static(BINARY),
                    }),
                    level: None,
                    after: LogIndex(0),
                }),
            ),
        ),
        (
            "request_read_stale",
            request(
                67,
                Op::Read(Read {
                    op: Box::new(Op::Get {
                        key: Bytes::from_static(b"k"),
                    }),
                    level: Some(Consistency::Stale),
                    after: LogIndex(0),
                }),
            ),
        ),
        (
            "request_read_session",
            request(
                68,
                Op::Read(Read {
                    op: Box::new(Op::Ttl {
                        key: Bytes::from_static(b"k"),
                    }),
                    level: Some(Consistency::Session),
                    after: LogIndex(1_000_000),
                }),
            ),
        ),
        (
            "request_read_linear",
            request(
                69,
                Op::Read(Read {
                    op: Box::new(Op::DbSize),
                    level: Some(Consistency::Linearizable),
                    after: LogIndex(7),
                }),
            ),
        ),
        (
            "request_read_bounded",
            request(
                70,
                Op::Read(Read {
                    op: Box::new(Op::Scan(Scan {
                        cursor: 5,
                        count: 10,
                        pattern: Some(Bytes::from_static(b"user:*")),
                    })),
                    level: Some(Consistency::Bounded { max_lag_ms: 250 }),
                    after: LogIndex(300),
                }),
            ),
        ),
        (
            "response_read_value",
            response(
                66,
                Reply::Read(ReadAnswer {
                    reply: Box::new(Reply::Value(Some(Bytes::from_static(BINARY)))),
                    index: LogIndex(301),
                }),
            ),
        ),
        (
            "response_read_behind",
            response(
                68,
                Reply::Read(ReadAnswer {
                    reply: Box::new(Reply::Error(ErrorReply::Behind {
                        applied: LogIndex(999_990),
                        wanted: LogIndex(1_000_000),
                    })),
                    index: LogIndex(999_990),
                }),
            ),
        ),
        (
            "error_behind",
            error(ErrorReply::Behind {
                applied: LogIndex(3),
                wanted: LogIndex(4),
            }),
        ),
        (
            "lead_check",
            Message::LeadCheck(LeadCheck {
                epoch: Epoch::from_raw(5),
                round: 42,
            }),
        ),
        (
            "lead_confirm",
            Message::LeadConfirm(LeadCheck {
                epoch: Epoch::from_raw(5),
                round: u64::MAX,
            }),
        ),
        (
            "response_cluster_view",
            response(
                71,
                Reply::ClusterView(Box::new(ClusterView {
                    report: ClusterReport {
                        status: ClusterStatus {
                            leader: Some("127.0.0.1:8081".to_string()),
                            epoch: Epoch::from_raw(7),
                            replicas: vec![
                                ReplicaView {
                                    id: Some(ReplicaId(1)),
                                    addr: "127.0.0.1:8081".to_string(),
                                    role: NodeRole::Leader,
                                    healthy: true,
                                    epoch: Epoch::from_raw(7),
                                    last_index: LogIndex(300),
                                    commit_index: LogIndex(300),
                                    applied_index: LogIndex(300),
                                    lag: 0,
                                },
                                ReplicaView {
                                    id: Some(ReplicaId(2)),
                                    addr: "127.0.0.1:8082".to_string(),
                                    role: NodeRole::Follower,
                                    healthy: true,
                                    epoch: Epoch::from_raw(7),
                                    last_index: LogIndex(299),
                                    commit_index: LogIndex(298),
                                    applied_index: LogIndex(298),
                                    lag: 1,
                                },
                            ],
                        },
                        resources: vec![Some(Resources::default()), None],
                    },
                    lag_ms: vec![Some(0), None],
                })),
            ),
        ),
    ]
}

/// Which variant (by wire position) of which enum each sample exercises.
///
/// Every match and struct pattern here is exhaustive on purpose: a new
/// variant or field does not compile until it is listed, and
/// [`every_variant_has_a_vector`] then fails until a sample covers it.
#[derive(Default)]
struct Coverage(BTreeMap<&'static str, BTreeSet<u32>>);

impl Coverage {
    fn mark(&mut self, enum_name: &'static str, index: u32) {
        self.0.entry(enum_name).or_default().insert(index);
    }

    fn message(&mut self, m: &Message) {
        let index = match m {
            Message::Hello(Hello {
                magic: _,
                version: _,
                role,
                node: _,
            }) => {
                self.role(*role);
                0
            }
            Message::Welcome(Welcome {
                version: _,
                node: _,
            }) => 1,
            Message::Reject(e) => {
                self.wire_error(e);
                2
            }
            Message::Request(Request { id: _, op }) => {
                self.op(op);
                3
            }
            Message::Response(Response { id: _, reply }) => {
                self.reply(reply);
                4
            }
            Message::Subscribe(Subscribe {
                epoch: _,
                follower: _,
                last_index: _,
                last_epoch: _,
                history: _,
            }) => 5,
            Message::StreamStart(StreamStart {
                epoch: _,
                prefix: _,
            }) => 6,
            Message::Entries(Entries {
                epoch: _,
                prev_index: _,
                entries,
                commit_index: _,
            }) => {
                for Entry {
                    index: _,
                    epoch: _,
                    op,
                } in entries
                {
                    self.write_op(op);
                }
                7
            }
            Message::Ack(Ack {
                epoch: _,
                match_index: _,
            }) => 8,
            Message::Snapshot(SnapshotChunk {
                epoch: _,
                last_index: _,
                last_epoch: _,
                history: _,
                offset: _,
                data: _,
                done: _,
            }) => 9,
            Message::StreamFrom(StreamFrom {
                epoch: _,
                prefix: _,
                prefix_epoch: _,
                prefix_crc: _,
            }) => 10,
            Message::SnapshotOffer(SnapshotOffer {
                epoch: _,
                last_index: _,
                total_len: _,
            }) => 11,
            Message::SecureHello(SecureHello {
                hello:
                    Hello {
                        magic: _,
                        version: _,
                        role,
                        node: _,
                    },
                nonce: Nonce(_),
            }) => {
                self.role(*role);
                12
            }
            Message::Challenge(Challenge {
                nonce: Nonce(_),
                mac: Mac(_),
            }) => 13,
            Message::Proof(Proof { mac: Mac(_) }) => 14,
            Message::HelloAuth(HelloAuth {
                hello:
                    Hello {
                        magic: _,
                        version: _,
                        role,
                        node: _,
                    },
                user: _,
                password: _,
            }) => {
                self.role(*role);
                15
            }
            Message::LeadCheck(LeadCheck { epoch: _, round: _ }) => 16,
            Message::LeadConfirm(LeadCheck { epoch: _, round: _ }) => 17,
        };
        self.mark("Message", index);
    }

    fn role(&mut self, r: Role) {
        let index = match r {
            Role::Client => 0,
            Role::Balancer => 1,
            Role::Replica => 2,
        };
        self.mark("Role", index);
    }

    fn wire_error(&mut self, e: &WireError) {
        let index = match e {
            WireError::FrameTooLarge { len: _, max: _ } => 0,
            WireError::ChecksumMismatch => 1,
            WireError::Undecodable { reason: _ } => 2,
            WireError::BadMagic { got: _ } => 3,
            WireError::UnsupportedVersion {
                got: _,
                supported: _,
            } => 4,
            WireError::HandshakeRequired => 5,
            WireError::WrongRole { role, what: _ } => {
                self.role(*role);
                6
            }
            WireError::Unexpected { what: _ } => 7,
            WireError::TooManyConnections { max: _ } => 8,
            WireError::AuthFailed { reason: _ } => 9,
            WireError::TlsRequired => 10,
        };
        self.mark("WireError", index);
    }

    fn op(&mut self, o: &Op) {
        let index = match o {
            Op::Get { key: _ } => 0,
            Op::Set { key: _, value: _ } => 1,
            Op::Delete { key: _ } => 2,
            Op::Ping => 3,
            Op::Status => 4,
            Op::Promote(Promote {
                epoch: _,
                sync_replicas: _,
                sync_timeout_ms: _,
                async_fallback: _,
            }) => 5,
            Op::Follow(Follow {
                epoch: _,
                leader: _,
                leader_addr: _,
            }) => 6,
            Op::Fence(Fence { epoch: _ }) => 7,
            Op::Command(command) => {
                self.command(command);
                8
            }
            Op::Ttl { key: _ } => 9,
            Op::Scan(Scan {
                cursor: _,
                count: _,
                pattern: _,
            }) => 10,
            Op::DbSize => 11,
            Op::Read(Read {
                op,
                level,
                after: _,
            }) => {
                self.op(op);
                if let Some(level) = level {
                    self.consistency(*level);
                }
                12
            }
        };
        self.mark("Op", index);
    }

    fn reply(&mut self, r: &Reply) {
        let index = match r {
            Reply::Value(_) => 0,
            Reply::Written { index: _ } => 1,
            Reply::Pong => 2,
            Reply::Node(status) => {
                self.node_status(status);
                3
            }
            Reply::Cluster(status) => {
                self.cluster_status(status);
                4
            }
            Reply::Error(e) => {
                self.error_reply(e);
                5
            }
            Reply::NodeReport(report) => {
                let NodeReport {
                    status,
                    resources,
                    leading,
                } = report.as_ref();
                if let Some(LeaderTerms {
                    sync_replicas: _,
                    sync_timeout_ms: _,
                    async_fallback: _,
                }) = leading
                {}
                self.node_status(status);
                self.resources(resources);
                6
            }
            Reply::ClusterReport(report) => {
                let ClusterReport { status, resources } = report.as_ref();
                self.cluster_status(status);
                for r in resources.iter().flatten() {
                    self.resources(r);
                }
                7
            }
            Reply::Outcome(Outcome {
                index: _,
                applied: _,
                value: _,
                int: _,
            }) => 8,
            Reply::Ttl(ttl) => {
                let index = match ttl {
                    KeyTtl::NoKey => 0,
                    KeyTtl::Persistent => 1,
                    KeyTtl::Expires {
                        at: _,
                        remaining_ms: _,
                    } => 2,
                };
                self.mark("KeyTtl", index);
                9
            }
            Reply::Keys(KeyPage { keys: _, cursor: _ }) => 10,
            Reply::KeyCount(KeyCount {
                keys: _,
                expiring: _,
            }) => 11,
            Reply::Read(ReadAnswer { reply, index: _ }) => {
                self.reply(reply);
                12
            }
            Reply::ClusterView(view) => {
                let ClusterView { report, lag_ms: _ } = view.as_ref();
                let ClusterReport { status, resources } = report;
                self.cluster_status(status);
                for r in resources.iter().flatten() {
                    self.resources(r);
                }
                13
            }
        };
        self.mark("Reply", index);
    }

    fn command(&mut self, c: &Command) {
        let index = match c {
            Command::Set {
                key: _,
                value: _,
                cond,
                ttl,
                get_old: _,
            } => {
                self.cond(*cond);
                self.ttl_change(*ttl);
                0
            }
            Command::MSet {
                pairs: _,
                only_if_none_exist: _,
            } => 1,
            Command::Delete { keys: _ } => 2,
            Command::IncrBy { key: _, by: _ } => 3,
            Command::Append { key: _, value: _ } => 4,
            Command::GetDel { key: _ } => 5,
            Command::Expire { key: _, ttl, cond } => {
                self.ttl_change(*ttl);
                let index = match cond {
                    ExpireCond::Always => 0,
                    ExpireCond::IfNone => 1,
                    ExpireCond::IfSome => 2,
                    ExpireCond::IfLater => 3,
                    ExpireCond::IfEarlier => 4,
                    ExpireCond::IfSomeAndEarlier => 5,
                };
                self.mark("ExpireCond", index);
                6
            }
            Command::GetEx { key: _, ttl } => {
                self.ttl_change(*ttl);
                7
            }
        };
        self.mark("Command", index);
    }

    fn cond(&mut self, c: Cond) {
        let index = match c {
            Cond::Always => 0,
            Cond::IfAbsent => 1,
            Cond::IfPresent => 2,
        };
        self.mark("Cond", index);
    }

    fn ttl_change(&mut self, t: TtlChange) {
        let index = match t {
            TtlChange::Keep => 0,
            TtlChange::Persist => 1,
            TtlChange::At(UnixMillis(_)) => 2,
            TtlChange::AfterMs(_) => 3,
        };
        self.mark("TtlChange", index);
    }

    fn resources(&mut self, r: &Resources) {
        let Resources {
            disk_full: _,
            memory_used: _,
            memory_limit: _,
        } = r;
    }

    fn node_status(&mut self, s: &NodeStatus) {
        let NodeStatus {
            id: _,
            role,
            epoch: _,
            last_index: _,
            last_epoch: _,
            commit_index: _,
            applied_index: _,
            leader: _,
            followers,
        } = s;
        self.node_role(*role);
        for FollowerProgress {
            id: _,
            match_index: _,
            connected: _,
        } in followers
        {}
    }

    fn cluster_status(&mut self, s: &ClusterStatus) {
        let ClusterStatus {
            leader: _,
            epoch: _,
            replicas,
        } = s;
        for ReplicaView {
            id: _,
            addr: _,
            role,
            healthy: _,
            epoch: _,
            last_index: _,
            commit_index: _,
            applied_index: _,
            lag: _,
        } in replicas
        {
            self.node_role(*role);
        }
    }

    fn error_reply(&mut self, e: &ErrorReply) {
        let index = match e {
            ErrorReply::NotLeader { leader: _ } => 0,
            ErrorReply::NotEnoughReplicas {
                acked: _,
                required: _,
            } => 1,
            ErrorReply::Unavailable {
                retry_after_ms: _,
                reason: _,
            } => 2,
            ErrorReply::Indeterminate { reason: _ } => 3,
            ErrorReply::Invalid { reason: _ } => 4,
            ErrorReply::StaleEpoch { got: _, current: _ } => 5,
            ErrorReply::Storage { reason: _ } => 6,
            ErrorReply::EpochConflict {
                epoch: _,
                reason: _,
            } => 7,
            ErrorReply::Diverged { reason: _ } => 8,
            ErrorReply::DiskFull { reason: _ } => 9,
            ErrorReply::OutOfMemory { used: _, limit: _ } => 10,
            ErrorReply::NoPermission { reason: _ } => 11,
            ErrorReply::NotAnInteger => 12,
            ErrorReply::Overflow => 13,
            ErrorReply::Behind {
                applied: _,
                wanted: _,
            } => 14,
        };
        self.mark("ErrorReply", index);
    }

    fn consistency(&mut self, c: Consistency) {
        let index = match c {
            Consistency::Stale => 0,
            Consistency::Session => 1,
            Consistency::Linearizable => 2,
            Consistency::Bounded { max_lag_ms: _ } => 3,
        };
        self.mark("Consistency", index);
    }

    fn node_role(&mut self, r: NodeRole) {
        let index = match r {
            NodeRole::Idle => 0,
            NodeRole::Leader => 1,
            NodeRole::Follower => 2,
        };
        self.mark("NodeRole", index);
    }

    fn write_op(&mut self, o: &WriteOp) {
        let index = match o {
            WriteOp::Set { key: _, value: _ } => 0,
            WriteOp::Delete { key: _ } => 1,
            WriteOp::Noop => 2,
            WriteOp::Batch(mutations) => {
                for Mutation {
                    key: _,
                    value: _,
                    expires_at: _,
                } in mutations
                {}
                3
            }
        };
        self.mark("WriteOp", index);
    }
}

/// How many variants `T` has on the wire, found by asking postcard to decode
/// each variant index alone: an existing variant fails for lack of field
/// bytes (or succeeds if it has none), a missing one is refused as an enum
/// error. This counts what the code really decodes, independent of the
/// hand-written match arms above.
fn wire_variant_count<T: DeserializeOwned>() -> u32 {
    for index in 0u8..0x80 {
        match postcard::from_bytes::<T>(&[index]) {
            Ok(_) | Err(postcard::Error::DeserializeUnexpectedEnd) => {}
            Err(postcard::Error::SerdeDeCustom) => return u32::from(index),
            Err(other) => panic!("probing variant {index}: unexpected {other:?}"),
        }
    }
    panic!("more than 127 variants: the probe needs multi-byte varints");
}

/// One parsed line of the golden file.
struct Vector {
    name: String,
    bytes: Vec<u8>,
}

fn hex_decode(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd-length hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_golden(text: &str) -> Vec<Vector> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(
                fields.len() == 3 || fields.len() == 4,
                "bad golden line {line:?}"
            );
            let bytes: Vec<u8> = fields[1..].iter().flat_map(|f| hex_decode(f)).collect();
            Vector {
                name: fields[0].to_string(),
                bytes,
            }
        })
        .collect()
}

fn golden() -> BTreeMap<String, Vec<u8>> {
    let mut map = BTreeMap::new();
    for v in parse_golden(GOLDEN) {
        assert!(
            map.insert(v.name.clone(), v.bytes).is_none(),
            "duplicate golden name {}",
            v.name
        );
    }
    map
}

fn encode(m: &Message) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frame::encode(m, DEFAULT_MAX_FRAME_LEN, &mut buf).unwrap();
    buf.to_vec()
}

fn render(samples: &[(&'static str, Message)]) -> String {
    let mut out = String::from(
        "# Frozen wire encoding of every semikv message variant: one frame per line.\n\
         # name  len(u32 BE)  crc32(u32 BE)  postcard payload. Never edit by hand;\n\
         # a changed line is a protocol version bump. See tests/golden.rs.\n",
    );
    let width = samples.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, m) in samples {
        let bytes = encode(m);
        let (header, payload) = bytes.split_at(HEADER_LEN);
        out.push_str(&format!(
            "{name:width$}  {}  {}  {}\n",
            hex_encode(&header[..4]),
            hex_encode(&header[4..]),
            hex_encode(payload)
        ));
    }
    out
}

fn blessing() -> bool {
    std::env::var_os("SEMIKV_BLESS").is_some_and(|v| v == "1")
}

/// Rewrites the golden file from the samples when `SEMIKV_BLESS=1`. Review the
/// diff: only lines of new variants may appear.
#[test]
fn bless() {
    if !blessing() {
        return;
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/messages.hex");
    std::fs::write(&path, render(&samples())).unwrap();
    eprintln!("wrote {}", path.display());
}

#[test]
fn samples_encode_to_their_frozen_vectors() {
    if blessing() {
        return;
    }
    let golden = golden();
    let mut failures = Vec::new();
    for (name, m) in samples() {
        let Some(want) = golden.get(name) else {
            failures.push(format!("{name}: no golden vector (bless it)"));
            continue;
        };
        let got = encode(&m);
        if &got != want {
            failures.push(format!(
                "{name}:\n  frozen  {}\n  encodes {}",
                hex_encode(want),
                hex_encode(&got)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "wire encoding changed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn frozen_vectors_decode_to_their_samples() {
    if blessing() {
        return;
    }
    let samples: BTreeMap<_, _> = samples().into_iter().collect();
    for (name, bytes) in golden() {
        let want = samples
            .get(name.as_str())
            .unwrap_or_else(|| panic!("golden vector {name} has no sample"));

        let (got, used) = frame::decode_slice::<Message>(&bytes, DEFAULT_MAX_FRAME_LEN)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: incomplete frame"));
        assert_eq!(&got, want, "{name} via frame::decode_slice");
        assert_eq!(used, bytes.len(), "{name}: frame length");

        let mut buf = BytesMut::from(&bytes[..]);
        let got = MessageCodec::default().decode_eof(&mut buf).unwrap();
        assert_eq!(got.as_ref(), Some(want), "{name} via MessageCodec");
        assert!(buf.is_empty(), "{name}: codec left bytes behind");
    }
}

#[test]
fn golden_file_is_in_sample_order_and_well_formed() {
    if blessing() {
        return;
    }
    let names: Vec<String> = parse_golden(GOLDEN).into_iter().map(|v| v.name).collect();
    let want: Vec<&str> = samples().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, want);
    // The header fields must describe the payload that follows them.
    for v in parse_golden(GOLDEN) {
        let header = frame::Header::parse(&v.bytes).unwrap();
        assert_eq!(header.frame_len(), v.bytes.len(), "{}: len", v.name);
        assert_eq!(
            header.crc,
            crc32fast_hash(&v.bytes[HEADER_LEN..]),
            "{}: crc",
            v.name
        );
    }
}

/// Recomputes the IEEE crc32 without the protocol's helpers, so a broken
/// checksum function cannot bless itself.
fn crc32fast_hash(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[test]
fn every_variant_has_a_vector() {
    let mut coverage = Coverage::default();
    for (_, m) in samples() {
        coverage.message(&m);
    }
    let counts = [
        ("Message", wire_variant_count::<Message>()),
        ("Role", wire_variant_count::<Role>()),
        ("WireError", wire_variant_count::<WireError>()),
        ("Op", wire_variant_count::<Op>()),
        ("Reply", wire_variant_count::<Reply>()),
        ("ErrorReply", wire_variant_count::<ErrorReply>()),
        ("NodeRole", wire_variant_count::<NodeRole>()),
        ("WriteOp", wire_variant_count::<WriteOp>()),
        ("Command", wire_variant_count::<Command>()),
        ("Cond", wire_variant_count::<Cond>()),
        ("TtlChange", wire_variant_count::<TtlChange>()),
        ("ExpireCond", wire_variant_count::<ExpireCond>()),
        ("KeyTtl", wire_variant_count::<KeyTtl>()),
        ("Consistency", wire_variant_count::<Consistency>()),
    ];
    for (name, count) in counts {
        let covered = coverage.0.get(name).cloned().unwrap_or_default();
        let all: BTreeSet<u32> = (0..count).collect();
        assert_eq!(
            covered, all,
            "{name}: samples cover variants {covered:?} of {count}; add a sample and bless it"
        );
    }
}

/// The walker's variant numbers must be the wire's: the first payload byte of
/// a message is its `Message` variant index.
#[test]
fn coverage_indexes_match_the_wire() {
    for (name, m) in samples() {
        let mut coverage = Coverage::default();
        coverage.message(&m);
        let index = *coverage.0["Message"].iter().next().unwrap();
        assert_eq!(
            u32::from(encode(&m)[HEADER_LEN]),
            index,
            "{name}: Message variant"
        );
    }
}

#[test]
fn hello_starts_with_variant_zero_and_the_magic_as_a_varint() {
    let bytes = encode(&Message::Hello(Hello::new(Role::Client, None)));
    let payload = &bytes[HEADER_LEN..];
    // Variant 0, MAGIC 0x534b5631 as LEB128, version 7, role 0, node None.
    assert_eq!(
        payload,
        [0x00, 0xb1, 0xac, 0xad, 0x9a, 0x05, 0x07, 0x00, 0x00]
    );
}
