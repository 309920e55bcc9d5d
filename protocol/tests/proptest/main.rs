#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of `MessageCodec`: arbitrary messages of every variant
//! survive encoding, back-to-back framing and arbitrary stream splits; hostile
//! bytes never panic, never allocate past the limit, and always surface as
//! the right typed error.
//!
//! proptest prints the failing input and records its seed in
//! `proptest-regressions/`, so a failure replays on the next run.
//!
//! `strategies` generates every wire type; `stream` encodes, cuts and
//! re-feeds byte streams; `frames` holds the properties of the frame around
//! a message (header, limit, checksum, truncation, hostile bytes) and
//! `messages` those of what it carries (round trips, payload decoding).

mod frames;
mod messages;
mod strategies;
mod stream;
