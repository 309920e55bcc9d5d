//! Strategies: one per wire type, covering every variant, and [`message`]
//! for any message at all.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use semikv_protocol::*;

/// Raw bytes: empty, short binary, and the occasional longer run, so keys and
/// values are never assumed to be text.
fn raw_bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        vec(any::<u8>(), 0..16).prop_map(Bytes::from),
        vec(any::<u8>(), 0..300).prop_map(Bytes::from),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), any::<String>()]
}

fn epoch() -> impl Strategy<Value = Epoch> {
    prop_oneof![
        any::<u64>().prop_map(|e| Epoch::from_raw(u128::from(e))),
        any::<u128>().prop_map(Epoch::from_raw),
    ]
}

fn index() -> impl Strategy<Value = LogIndex> {
    any::<u64>().prop_map(LogIndex)
}

fn replica_id() -> impl Strategy<Value = ReplicaId> {
    any::<u32>().prop_map(ReplicaId)
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Client),
        Just(Role::Balancer),
        Just(Role::Replica)
    ]
}

fn node_role() -> impl Strategy<Value = NodeRole> {
    prop_oneof![
        Just(NodeRole::Idle),
        Just(NodeRole::Leader),
        Just(NodeRole::Follower)
    ]
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        prop_oneof![Just(MAGIC), any::<u32>()],
        prop_oneof![Just(PROTOCOL_VERSION), any::<u16>()],
        role(),
        proptest::option::of(replica_id()),
    )
        .prop_map(|(magic, version, role, node)| Hello {
            magic,
            version,
            role,
            node,
        })
}

fn welcome() -> impl Strategy<Value = Welcome> {
    (any::<u16>(), proptest::option::of(replica_id()))
        .prop_map(|(version, node)| Welcome { version, node })
}

fn wire_error() -> impl Strategy<Value = WireError> {
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(len, max)| WireError::FrameTooLarge { len, max }),
        Just(WireError::ChecksumMismatch),
        text().prop_map(|reason| WireError::Undecodable { reason }),
        any::<u32>().prop_map(|got| WireError::BadMagic { got }),
        (any::<u16>(), any::<u16>())
            .prop_map(|(got, supported)| WireError::UnsupportedVersion { got, supported }),
        Just(WireError::HandshakeRequired),
        (role(), text()).prop_map(|(role, what)| WireError::WrongRole { role, what }),
        text().prop_map(|what| WireError::Unexpected { what }),
        any::<u64>().prop_map(|max| WireError::TooManyConnections { max }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        raw_bytes().prop_map(|key| Op::Get { key }),
        (raw_bytes(), raw_bytes()).prop_map(|(key, value)| Op::Set { key, value }),
        raw_bytes().prop_map(|key| Op::Delete { key }),
        Just(Op::Ping),
        Just(Op::Status),
        (epoch(), any::<u32>(), any::<u64>(), any::<bool>()).prop_map(
            |(epoch, sync_replicas, sync_timeout_ms, async_fallback)| Op::Promote(Promote {
                epoch,
                sync_replicas,
                sync_timeout_ms,
                async_fallback,
            })
        ),
        (epoch(), replica_id(), text()).prop_map(|(epoch, leader, leader_addr)| Op::Follow(
            Follow {
                epoch,
                leader,
                leader_addr,
            }
        )),
        epoch().prop_map(|epoch| Op::Fence(Fence { epoch })),
        command().prop_map(Op::Command),
        raw_bytes().prop_map(|key| Op::Ttl { key }),
    ]
}

fn ttl_change() -> impl Strategy<Value = TtlChange> {
    prop_oneof![
        Just(TtlChange::Keep),
        Just(TtlChange::Persist),
        any::<u64>().prop_map(|at| TtlChange::At(UnixMillis(at))),
        any::<u64>().prop_map(TtlChange::AfterMs),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    let cond = prop_oneof![
        Just(Cond::Always),
        Just(Cond::IfAbsent),
        Just(Cond::IfPresent)
    ];
    let expire_cond = prop_oneof![
        Just(ExpireCond::Always),
        Just(ExpireCond::IfNone),
        Just(ExpireCond::IfSome),
        Just(ExpireCond::IfLater),
        Just(ExpireCond::IfEarlier),
        Just(ExpireCond::IfSomeAndEarlier),
    ];
    prop_oneof![
        (raw_bytes(), raw_bytes(), cond, ttl_change(), any::<bool>()).prop_map(
            |(key, value, cond, ttl, get_old)| Command::Set {
                key,
                value,
                cond,
                ttl,
                get_old
            }
        ),
        (vec((raw_bytes(), raw_bytes()), 0..4), any::<bool>()).prop_map(
            |(pairs, only_if_none_exist)| Command::MSet {
                pairs,
                only_if_none_exist
            }
        ),
        vec(raw_bytes(), 0..4).prop_map(|keys| Command::Delete { keys }),
        (raw_bytes(), any::<i64>()).prop_map(|(key, by)| Command::IncrBy { key, by }),
        (raw_bytes(), raw_bytes()).prop_map(|(key, value)| Command::Append { key, value }),
        raw_bytes().prop_map(|key| Command::GetDel { key }),
        (raw_bytes(), ttl_change(), expire_cond).prop_map(|(key, ttl, cond)| Command::Expire {
            key,
            ttl,
            cond
        }),
        (raw_bytes(), ttl_change()).prop_map(|(key, ttl)| Command::GetEx { key, ttl }),
    ]
}

fn follower_progress() -> impl Strategy<Value = FollowerProgress> {
    (replica_id(), index(), any::<bool>()).prop_map(|(id, match_index, connected)| {
        FollowerProgress {
            id,
            match_index,
            connected,
        }
    })
}

fn node_status() -> impl Strategy<Value = NodeStatus> {
    (
        (replica_id(), node_role(), epoch(), index(), epoch()),
        (
            index(),
            index(),
            proptest::option::of(text()),
            vec(follower_progress(), 0..4),
        ),
    )
        .prop_map(
            |(
                (id, role, epoch, last_index, last_epoch),
                (commit_index, applied_index, leader, followers),
            )| NodeStatus {
                id,
                role,
                epoch,
                last_index,
                last_epoch,
                commit_index,
                applied_index,
                leader,
                followers,
            },
        )
}

fn replica_view() -> impl Strategy<Value = ReplicaView> {
    (
        (
            proptest::option::of(replica_id()),
            text(),
            node_role(),
            any::<bool>(),
        ),
        (epoch(), index(), index(), index(), any::<u64>()),
    )
        .prop_map(
            |((id, addr, role, healthy), (epoch, last_index, commit_index, applied_index, lag))| {
                ReplicaView {
                    id,
                    addr,
                    role,
                    healthy,
                    epoch,
                    last_index,
                    commit_index,
                    applied_index,
                    lag,
                }
            },
        )
}

fn cluster_status() -> impl Strategy<Value = ClusterStatus> {
    (
        proptest::option::of(text()),
        epoch(),
        vec(replica_view(), 0..4),
    )
        .prop_map(|(leader, epoch, replicas)| ClusterStatus {
            leader,
            epoch,
            replicas,
        })
}

fn leader_terms() -> impl Strategy<Value = LeaderTerms> {
    (any::<u32>(), any::<u64>(), any::<bool>()).prop_map(
        |(sync_replicas, sync_timeout_ms, async_fallback)| LeaderTerms {
            sync_replicas,
            sync_timeout_ms,
            async_fallback,
        },
    )
}

fn resources() -> impl Strategy<Value = Resources> {
    (
        proptest::option::of(text()),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(disk_full, memory_used, memory_limit)| Resources {
            disk_full,
            memory_used,
            memory_limit,
        })
}

fn error_reply() -> impl Strategy<Value = ErrorReply> {
    prop_oneof![
        proptest::option::of(text()).prop_map(|leader| ErrorReply::NotLeader { leader }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(acked, required)| ErrorReply::NotEnoughReplicas { acked, required }),
        (any::<u64>(), text()).prop_map(|(retry_after_ms, reason)| ErrorReply::Unavailable {
            retry_after_ms,
            reason
        }),
        text().prop_map(|reason| ErrorReply::Indeterminate { reason }),
        text().prop_map(|reason| ErrorReply::Invalid { reason }),
        (epoch(), epoch()).prop_map(|(got, current)| ErrorReply::StaleEpoch { got, current }),
        text().prop_map(|reason| ErrorReply::Storage { reason }),
        (epoch(), text()).prop_map(|(epoch, reason)| ErrorReply::EpochConflict { epoch, reason }),
        text().prop_map(|reason| ErrorReply::Diverged { reason }),
        text().prop_map(|reason| ErrorReply::DiskFull { reason }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(used, limit)| ErrorReply::OutOfMemory { used, limit }),
        Just(ErrorReply::NotAnInteger),
        Just(ErrorReply::Overflow),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        proptest::option::of(raw_bytes()).prop_map(Reply::Value),
        index().prop_map(|index| Reply::Written { index }),
        Just(Reply::Pong),
        node_status().prop_map(Reply::Node),
        cluster_status().prop_map(Reply::Cluster),
        error_reply().prop_map(Reply::Error),
        (
            node_status(),
            resources(),
            proptest::option::of(leader_terms())
        )
            .prop_map(|(status, resources, leading)| Reply::NodeReport(Box::new(
                NodeReport {
                    status,
                    resources,
                    leading
                }
            ))),
        (
            cluster_status(),
            vec(proptest::option::of(resources()), 0..4)
        )
            .prop_map(|(status, resources)| Reply::ClusterReport(Box::new(
                ClusterReport { status, resources }
            ))),
        (
            index(),
            any::<bool>(),
            proptest::option::of(raw_bytes()),
            any::<i64>()
        )
            .prop_map(|(index, applied, value, int)| Reply::Outcome(Outcome {
                index,
                applied,
                value,
                int
            })),
        prop_oneof![
            Just(KeyTtl::NoKey),
            Just(KeyTtl::Persistent),
            (any::<u64>(), any::<u64>()).prop_map(|(at, remaining_ms)| KeyTtl::Expires {
                at: UnixMillis(at),
                remaining_ms
            }),
        ]
        .prop_map(Reply::Ttl),
    ]
}

fn write_op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        (raw_bytes(), raw_bytes()).prop_map(|(key, value)| WriteOp::Set { key, value }),
        raw_bytes().prop_map(|key| WriteOp::Delete { key }),
        Just(WriteOp::Noop),
        vec(
            (
                raw_bytes(),
                proptest::option::of(raw_bytes()),
                proptest::option::of(any::<u64>())
            ),
            0..4
        )
        .prop_map(|mutations| WriteOp::Batch(
            mutations
                .into_iter()
                .map(|(key, value, at)| Mutation {
                    key,
                    value,
                    expires_at: at.map(UnixMillis),
                })
                .collect()
        )),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (index(), epoch(), write_op()).prop_map(|(index, epoch, op)| Entry { index, epoch, op })
}

fn history() -> impl Strategy<Value = Vec<EpochStart>> {
    vec(
        (epoch(), index()).prop_map(|(epoch, start)| EpochStart { epoch, start }),
        0..4,
    )
}

/// Any message of any variant.
pub(crate) fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello().prop_map(Message::Hello),
        welcome().prop_map(Message::Welcome),
        wire_error().prop_map(Message::Reject),
        (any::<u64>(), op()).prop_map(|(id, op)| Message::Request(Request {
            id: RequestId(id),
            op
        })),
        (any::<u64>(), reply()).prop_map(|(id, reply)| Message::Response(Response {
            id: RequestId(id),
            reply
        })),
        (epoch(), replica_id(), index(), epoch(), history()).prop_map(
            |(epoch, follower, last_index, last_epoch, history)| Message::Subscribe(Subscribe {
                epoch,
                follower,
                last_index,
                last_epoch,
                history,
            })
        ),
        (epoch(), index())
            .prop_map(|(epoch, prefix)| Message::StreamStart(StreamStart { epoch, prefix })),
        (epoch(), index(), vec(entry(), 0..4), index()).prop_map(
            |(epoch, prev_index, entries, commit_index)| Message::Entries(Entries {
                epoch,
                prev_index,
                entries,
                commit_index,
            })
        ),
        (epoch(), index())
            .prop_map(|(epoch, match_index)| Message::Ack(Ack { epoch, match_index })),
        (
            (epoch(), index(), epoch(), history()),
            (any::<u64>(), raw_bytes(), any::<bool>())
        )
            .prop_map(
                |((epoch, last_index, last_epoch, history), (offset, data, done))| {
                    Message::Snapshot(SnapshotChunk {
                        epoch,
                        last_index,
                        last_epoch,
                        history,
                        offset,
                        data,
                        done,
                    })
                }
            ),
        (
            epoch(),
            index(),
            epoch(),
            proptest::option::of(any::<u32>())
        )
            .prop_map(
                |(epoch, prefix, prefix_epoch, prefix_crc)| Message::StreamFrom(StreamFrom {
                    epoch,
                    prefix,
                    prefix_epoch,
                    prefix_crc,
                })
            ),
        (epoch(), index(), any::<u64>()).prop_map(|(epoch, last_index, total_len)| {
            Message::SnapshotOffer(SnapshotOffer {
                epoch,
                last_index,
                total_len,
            })
        }),
    ]
}
