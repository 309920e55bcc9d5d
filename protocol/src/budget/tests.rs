//! The read budget's accounting, and connections under it stopping and
//! going on, over in-memory pipes with the clock paused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio_util::codec::{Encoder, FramedRead};

use super::*;
use crate::message::{Message, WireError};
use crate::MessageCodec;

const MIB: usize = 1024 * 1024;

/// Longer than anything here takes when it can make progress: the
/// clock is paused, so it passes at once when nothing can.
const STUCK: Duration = Duration::from_secs(60);

type Reader = FramedRead<Budgeted<DuplexStream>, MessageCodec>;

/// A message whose frame is about `len` bytes long, and that frame.
fn frame_of(len: usize) -> (Message, Bytes) {
    let message = Message::Reject(WireError::Undecodable {
        reason: "x".repeat(len.saturating_sub(16)),
    });
    let mut buf = BytesMut::new();
    MessageCodec::default().encode(&message, &mut buf).unwrap();
    (message, buf.freeze())
}

/// A connection read under `budget`, and its peer's sending half. The
/// pipe holds 64 KiB, so a sender blocks when the reader stops, as a
/// TCP peer would.
fn connection(budget: &ReadBudget) -> (Reader, DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let reader = FramedRead::new(Budgeted::new(ours, budget), MessageCodec::default());
    (reader, theirs)
}

/// Sends `bytes` from a task of its own (it blocks while the reader
/// does not read), keeping the sending half open afterwards.
fn send(mut peer: DuplexStream, bytes: Bytes) -> tokio::task::JoinHandle<DuplexStream> {
    tokio::spawn(async move {
        let _ = peer.write_all(&bytes).await;
        peer
    })
}

#[test]
fn progress_follows_frame_boundaries_across_reads() {
    let (_, a) = frame_of(100);
    let (_, b) = frame_of(70_000);
    let stream: Vec<u8> = [&a[..], &b[..], &a[..]].concat();
    let mut progress = FrameProgress::default();
    // In pieces that split headers and lengths anywhere.
    let mut finished = 0;
    let mut at = 0;
    for piece in [1usize, 2, 3, 50, 100, 69_000, 1_000, 1_000, 100_000] {
        let end = (at + piece).min(stream.len());
        if progress.observe(&stream[at..end]) {
            finished += 1;
        }
        at = end;
        if at == a.len() + 1 {
            assert_eq!(progress.seen, 1, "the second frame started");
        }
        if at == a.len() + 6 {
            assert_eq!(progress.frame_len(), Some(b.len() as u64));
        }
    }
    assert_eq!(at, stream.len());
    // The first piece to end a frame counts once, however many it ended.
    assert!(finished >= 2, "{finished}");
    assert_eq!(progress.seen, 0, "ends on a boundary");
    // Two whole frames in one read.
    let mut progress = FrameProgress::default();
    let two: Vec<u8> = [&a[..], &a[..], &a[..5]].concat();
    assert!(progress.observe(&two));
    assert_eq!(progress.seen, 5);
    assert_eq!(progress.frame_len(), Some(a.len() as u64));
}

#[test]
fn a_frame_needs_what_it_has_beyond_the_floor_in_whole_units() {
    let budget = ReadBudget::new(4 * MIB + 100);
    assert_eq!(budget.capacity(), 4 * MIB, "rounded down to whole KiB");
    assert_eq!(budget.units_for(100), 0);
    assert_eq!(budget.units_for(SMALL_FRAME as u64), 0);
    assert_eq!(budget.units_for(SMALL_FRAME as u64 + 1), 1);
    assert_eq!(budget.units_for((SMALL_FRAME + 2048) as u64), 2);
    assert_eq!(
        budget.units_for(u64::from(u32::MAX) + 8),
        4096,
        "at most all"
    );
    assert_eq!(ReadBudget::new(0).capacity(), UNIT, "never empty");
}

#[tokio::test(start_paused = true)]
async fn small_frames_never_touch_the_budget() {
    let budget = ReadBudget::new(MIB);
    let (mut reader, peer) = connection(&budget);
    let (message, frame) = frame_of(SMALL_FRAME - 100);
    let many: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 20)
        .collect();
    let _peer = send(peer, many.into());
    for _ in 0..20 {
        assert_eq!(reader.next().await.unwrap().unwrap(), message);
        assert_eq!(budget.available(), MIB);
    }
}

#[tokio::test(start_paused = true)]
async fn a_large_frame_holds_its_bytes_until_it_is_decoded() {
    let budget = ReadBudget::new(4 * MIB);
    let (mut reader, peer) = connection(&budget);
    let (message, frame) = frame_of(MIB);
    // Half of it, then nothing: the grant covers the whole frame.
    let sending = send(peer, frame.slice(..frame.len() / 2));
    assert!(tokio::time::timeout(STUCK, reader.next()).await.is_err());
    let peer = sending.await.unwrap();
    let held = 4 * MIB - budget.available();
    assert!(
        held >= frame.len() - SMALL_FRAME && held < frame.len() - SMALL_FRAME + UNIT,
        "held {held} for a frame of {}",
        frame.len()
    );
    assert!(!reader.get_ref().is_waiting());
    // The rest: decoded, and the bytes are back.
    let _peer = send(peer, frame.slice(frame.len() / 2..));
    assert_eq!(reader.next().await.unwrap().unwrap(), message);
    assert_eq!(budget.available(), 4 * MIB);
}

#[tokio::test(start_paused = true)]
async fn past_the_budget_a_connection_stops_reading_and_goes_on_once_bytes_return() {
    let budget = ReadBudget::new(MIB);
    let (big, frame) = frame_of(900 * 1024);
    // The first takes most of the budget and stalls mid-frame.
    let (mut first, peer) = connection(&budget);
    let sending = send(peer, frame.slice(..frame.len() - 10));
    assert!(tokio::time::timeout(STUCK, first.next()).await.is_err());
    let first_peer = sending.await.unwrap();
    // The second cannot have its frame covered: it stops reading (its
    // peer blocks) with no more than the floor taken in, and no error.
    let (mut second, peer) = connection(&budget);
    let second_peer = send(peer, frame.clone());
    assert!(tokio::time::timeout(STUCK, second.next()).await.is_err());
    assert!(second.get_ref().is_waiting());
    assert!(second.read_buffer().len() <= SMALL_FRAME);
    assert!(!second_peer.is_finished(), "the sender was not held back");
    // A small frame on a third connection is read meanwhile.
    let (mut third, peer) = connection(&budget);
    let (small, small_frame) = frame_of(1000);
    let _third_peer = send(peer, small_frame);
    assert_eq!(third.next().await.unwrap().unwrap(), small);
    // The first finishes: the second reads its frame whole.
    let _first_peer = send(first_peer, frame.slice(frame.len() - 10..));
    assert_eq!(first.next().await.unwrap().unwrap(), big);
    assert_eq!(second.next().await.unwrap().unwrap(), big);
    assert!(!second.get_ref().is_waiting());
    assert_eq!(budget.available(), MIB);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_connection_gives_its_bytes_back() {
    let budget = ReadBudget::new(MIB);
    let (big, frame) = frame_of(900 * 1024);
    let (mut holder, peer) = connection(&budget);
    let _holder_peer = send(peer, frame.slice(..frame.len() / 2));
    assert!(tokio::time::timeout(STUCK, holder.next()).await.is_err());
    assert!(budget.available() < MIB / 4);
    let (mut waiter, peer) = connection(&budget);
    let _waiter_peer = send(peer, frame.clone());
    assert!(tokio::time::timeout(STUCK, waiter.next()).await.is_err());
    // A waiter that goes away leaves nothing taken either.
    let (mut gone, peer) = connection(&budget);
    let _gone_peer = send(peer, frame.clone());
    assert!(tokio::time::timeout(STUCK, gone.next()).await.is_err());
    drop(gone);
    drop(holder);
    assert_eq!(waiter.next().await.unwrap().unwrap(), big);
    assert_eq!(budget.available(), MIB);
}

/// Many honest peers sending large frames at once, far more than the
/// budget covers together: all are read, in turn (taking bytes as they
/// arrived instead would leave every one stuck half-way).
#[tokio::test(start_paused = true)]
async fn large_frames_beyond_the_budget_all_arrive_in_turn() {
    let budget = ReadBudget::new(2 * MIB);
    let (big, frame) = frame_of(900 * 1024);
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (reader, peer) = connection(&budget);
        let three: Vec<u8> = [&frame[..], &frame[..], &frame[..]].concat();
        // Runs on its own; nothing waits for it.
        drop(send(peer, three.into()));
        readers.push(reader);
    }
    let all = futures::future::join_all(readers.into_iter().map(|mut reader| {
        let big = big.clone();
        async move {
            for _ in 0..3 {
                assert_eq!(reader.next().await.unwrap().unwrap(), big);
            }
        }
    }));
    tokio::time::timeout(STUCK, all)
        .await
        .expect("every frame arrives");
    assert_eq!(budget.available(), 2 * MIB);
}

#[tokio::test(start_paused = true)]
async fn a_frame_larger_than_the_whole_budget_is_an_error_not_a_hang() {
    let budget = ReadBudget::new(128 * 1024);
    let (mut reader, peer) = connection(&budget);
    let (_, frame) = frame_of(MIB);
    let _peer = send(peer, frame);
    let read = tokio::time::timeout(STUCK, reader.next()).await.unwrap();
    let err = read.unwrap().unwrap_err();
    assert!(err.to_string().contains("read budget"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_grant_for_a_self_framed_message_holds_its_bytes_and_waits_its_turn() {
    let budget = ReadBudget::new(2 * MIB);
    assert!(
        budget.grant(SMALL_FRAME).await.is_none(),
        "a small message needs no budget"
    );
    let first = budget.grant(SMALL_FRAME + 2 * MIB).await;
    assert!(first.is_some());
    assert_eq!(budget.available(), 0);
    // The second waits until the first is given back.
    let waiting = budget.grant(SMALL_FRAME + MIB);
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut waiting)
            .await
            .is_err()
    );
    drop(first);
    let second = tokio::time::timeout(STUCK, waiting).await.unwrap();
    assert!(second.is_some());
    assert_eq!(budget.available(), MIB);
    drop(second);
    assert_eq!(budget.available(), 2 * MIB);
}
