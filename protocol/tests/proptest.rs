#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of `MessageCodec`: arbitrary messages of every variant
//! survive encoding, back-to-back framing and arbitrary stream splits; hostile
//! bytes never panic, never allocate past the limit, and always surface as
//! the right typed error.
//!
//! proptest prints the failing input and records its seed in
//! `proptest-regressions/`, so a failure replays on the next run.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use semikv_protocol::frame::{DEFAULT_MAX_FRAME_LEN, HEADER_LEN};
use semikv_protocol::*;
use tokio_util::codec::{Decoder, Encoder};

// ---------------------------------------------------------------------------
// Strategies: one per wire type, covering every variant.
// ---------------------------------------------------------------------------

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
    ]
}

fn write_op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        (raw_bytes(), raw_bytes()).prop_map(|(key, value)| WriteOp::Set { key, value }),
        raw_bytes().prop_map(|key| WriteOp::Delete { key }),
        Just(WriteOp::Noop),
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
fn message() -> impl Strategy<Value = Message> {
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
    ]
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

fn encode_all(messages: &[Message]) -> BytesMut {
    let mut codec = MessageCodec::default();
    let mut buf = BytesMut::new();
    for m in messages {
        codec.encode(m, &mut buf).unwrap();
    }
    buf
}

/// Sorted, deduplicated cut points inside `len`, from arbitrary indexes.
fn cut_points(cuts: &[Index], len: usize) -> Vec<usize> {
    let mut points: Vec<usize> = if len == 0 {
        Vec::new()
    } else {
        cuts.iter().map(|i| i.index(len)).collect()
    };
    points.sort_unstable();
    points.dedup();
    points
}

/// Everything the decoder produced from `stream` fed in pieces cut at `cuts`,
/// then EOF; stops at the first error.
fn decode_chunked(
    codec: &mut MessageCodec,
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<Message>, Option<ProtocolError>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// A frame around `payload` with a correct length and checksum, so that the
/// bytes reach the message decoder instead of failing the checksum.
fn frame_of(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Whatever a decoder accepted must be a message we can send back unchanged.
fn assert_reencodes(m: &Message) -> Result<(), TestCaseError> {
    let mut codec = MessageCodec::default();
    let mut buf = BytesMut::new();
    codec.encode(m, &mut buf).unwrap();
    let back = codec.decode_eof(&mut buf).unwrap().unwrap();
    prop_assert_eq!(&back, m);
    prop_assert!(buf.is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Back-to-back frames split anywhere decode to exactly the messages sent,
    /// in order, with nothing left over.
    #[test]
    fn chunked_stream_round_trips(
        messages in vec(message(), 1..8),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let stream = encode_all(&messages);
        let cuts = cut_points(&cuts, stream.len());
        let (decoded, err) = decode_chunked(&mut MessageCodec::default(), &stream, &cuts);
        prop_assert!(err.is_none(), "unexpected error {:?}", err);
        prop_assert_eq!(decoded, messages);
    }

    /// The header is what the frame layout promises: the payload's length and
    /// its crc32, big-endian.
    #[test]
    fn header_describes_the_payload(m in message()) {
        let buf = encode_all(std::slice::from_ref(&m));
        let len = u32::from_be_bytes(buf[0..4].try_into().unwrap()) as usize;
        let crc = u32::from_be_bytes(buf[4..8].try_into().unwrap());
        prop_assert_eq!(len, buf.len() - HEADER_LEN);
        prop_assert_eq!(crc, crc32fast::hash(&buf[HEADER_LEN..]));
    }

    /// Random bytes, chunked, never panic; anything they decode to re-encodes.
    #[test]
    fn random_bytes_never_panic(
        stream in vec(any::<u8>(), 0..512),
        cuts in vec(any::<Index>(), 0..8),
        small_limit in any::<bool>(),
    ) {
        let mut codec = MessageCodec::new(if small_limit { 64 } else { DEFAULT_MAX_FRAME_LEN });
        let cuts = cut_points(&cuts, stream.len());
        let (decoded, _err) = decode_chunked(&mut codec, &stream, &cuts);
        for m in &decoded {
            assert_reencodes(m)?;
        }
    }

    /// Random payloads inside well-formed frames reach postcard: they decode
    /// to a message or fail with `Undecodable`, never anything else, never a
    /// panic.
    #[test]
    fn random_payloads_in_valid_frames_are_decoded_or_undecodable(
        payload in vec(any::<u8>(), 0..256),
    ) {
        let mut buf = BytesMut::from(&frame_of(&payload)[..]);
        match MessageCodec::default().decode_eof(&mut buf) {
            Ok(Some(m)) => assert_reencodes(&m)?,
            Ok(None) => prop_assert!(false, "a whole frame decoded to nothing"),
            Err(ProtocolError::Undecodable { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {:?}", e),
        }
        prop_assert!(buf.is_empty(), "the frame was not consumed");
    }

    /// A valid message's payload with junk appended is rejected, not silently
    /// accepted: trailing bytes are an error.
    #[test]
    fn trailing_bytes_in_a_payload_are_undecodable(
        m in message(),
        junk in vec(any::<u8>(), 1..16),
    ) {
        let encoded = encode_all(std::slice::from_ref(&m));
        let mut payload = encoded[HEADER_LEN..].to_vec();
        payload.extend_from_slice(&junk);
        let mut buf = BytesMut::from(&frame_of(&payload)[..]);
        let result = MessageCodec::default().decode_eof(&mut buf);
        prop_assert!(
            matches!(result, Err(ProtocolError::Undecodable { .. })),
            "got {:?}",
            result
        );
    }

    /// Any announced length over the limit is rejected as soon as the header
    /// is in, whatever follows, without reserving room for the frame.
    #[test]
    fn oversized_length_is_rejected_without_allocating(
        len in (1025u32..=u32::MAX),
        crc in any::<u32>(),
        tail in vec(any::<u8>(), 0..32),
    ) {
        let mut codec = MessageCodec::new(1024);
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&crc.to_be_bytes());
        buf.extend_from_slice(&tail);
        let err = codec.decode(&mut buf).unwrap_err();
        prop_assert!(
            matches!(err, ProtocolError::FrameTooLarge { len: l, max: 1024 } if l == u64::from(len)),
            "got {:?}",
            err
        );
        prop_assert!(buf.capacity() <= 128, "buffer grew to {}", buf.capacity());
    }

    /// Every single-bit flip in the checksum or the payload is a checksum
    /// mismatch (CRC-32 detects all single-bit errors).
    #[test]
    fn bit_flip_in_crc_or_payload_is_a_checksum_mismatch(m in message()) {
        let frame = encode_all(std::slice::from_ref(&m));
        for bit in (4 * 8)..(frame.len() * 8) {
            let mut buf = frame.clone();
            buf[bit / 8] ^= 1 << (bit % 8);
            let result = MessageCodec::default().decode_eof(&mut buf);
            prop_assert!(
                matches!(result, Err(ProtocolError::ChecksumMismatch { .. })),
                "flip of bit {} gave {:?}",
                bit,
                result
            );
        }
    }

    /// A flip in the length field never yields a message: the frame is then
    /// too large, incomplete (more bytes awaited, `Truncated` at EOF), or
    /// checked over the wrong bytes.
    #[test]
    fn bit_flip_in_length_never_yields_a_message(m in message()) {
        let frame = encode_all(std::slice::from_ref(&m));
        for bit in 0..32 {
            let mut flipped = frame.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);

            let mut buf = flipped.clone();
            let live = MessageCodec::default().decode(&mut buf);
            prop_assert!(
                matches!(live, Ok(None) | Err(_)),
                "flip of length bit {} decoded {:?}",
                bit,
                live
            );

            let mut buf = flipped;
            let at_eof = MessageCodec::default().decode_eof(&mut buf);
            prop_assert!(at_eof.is_err(), "flip of length bit {} gave {:?} at EOF", bit, at_eof);
        }
    }

    /// A stream that ends mid-frame yields every whole frame before the cut,
    /// then `Truncated` saying how much arrived and how much was needed.
    #[test]
    fn eof_mid_frame_is_truncated(
        whole in vec(message(), 0..4),
        last in message(),
        cut in any::<Index>(),
    ) {
        let prefix = encode_all(&whole);
        let last_frame = encode_all(std::slice::from_ref(&last));
        // 1..len: at least one byte of the last frame, never all of it.
        let keep = 1 + cut.index(last_frame.len() - 1);
        let mut stream = prefix.clone();
        stream.extend_from_slice(&last_frame[..keep]);

        let (decoded, err) = decode_chunked(&mut MessageCodec::default(), &stream, &[]);
        prop_assert_eq!(decoded, whole);
        let need = if keep < HEADER_LEN { HEADER_LEN } else { last_frame.len() };
        match err {
            Some(ProtocolError::Truncated { have, need: n }) => {
                prop_assert_eq!(have, keep as u64);
                prop_assert_eq!(n, need as u64);
            }
            other => prop_assert!(false, "expected Truncated, got {:?}", other),
        }
    }
}

/// The exact hostile header from the brief: 0xFFFFFFFF against the default
/// limit, through both `decode` and `decode_eof`.
#[test]
fn all_ones_length_is_frame_too_large_and_buffer_stays_small() {
    for eof in [false, true] {
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 2, 3]);
        let result = if eof {
            codec.decode_eof(&mut buf)
        } else {
            codec.decode(&mut buf)
        };
        let err = result.unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::FrameTooLarge { len: 0xffff_ffff, max }
                    if max == DEFAULT_MAX_FRAME_LEN as u64
            ),
            "got {err:?}"
        );
        assert!(buf.capacity() <= 64, "buffer grew to {}", buf.capacity());
    }
}

/// A header fed one byte at a time never reserves before it is whole and
/// checked.
#[test]
fn all_ones_length_fed_bytewise_never_reserves_the_frame() {
    let mut codec = MessageCodec::default();
    let mut buf = BytesMut::new();
    let header = [0xffu8, 0xff, 0xff, 0xff, 0, 0, 0, 0];
    for (i, b) in header.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let result = codec.decode(&mut buf);
        if i + 1 < HEADER_LEN {
            assert!(matches!(result, Ok(None)), "got {result:?}");
        } else {
            assert!(matches!(result, Err(ProtocolError::FrameTooLarge { .. })));
        }
        assert!(buf.capacity() <= 64, "buffer grew to {}", buf.capacity());
    }
}
