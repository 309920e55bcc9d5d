//! Criterion micro-benchmarks of the wire codec: encoding and decoding one
//! request and one response frame (the per-request cost every hop pays), and
//! a pipelined batch of 16 decoded from one buffer.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use semikv_protocol::frame::{self, DEFAULT_MAX_FRAME_LEN};
use semikv_protocol::{Message, MessageCodec, Op, Reply, Request, RequestId, Response};
use tokio_util::codec::Decoder;

fn set_request(id: u64) -> Message {
    Message::Request(Request {
        id: RequestId(id),
        op: Op::Set {
            key: Bytes::from(format!("bench-abcdef-7-{id}")),
            value: Bytes::from_static(b"7:12345:xxxxxxxx"),
        },
    })
}

fn get_response(id: u64) -> Message {
    Message::Response(Response {
        id: RequestId(id),
        reply: Reply::Value(Some(Bytes::from_static(b"7:12345:xxxxxxxx"))),
    })
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    for (name, message) in [
        ("set_request", set_request(42)),
        ("get_response", get_response(42)),
    ] {
        let mut buf = BytesMut::with_capacity(256);
        group.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                frame::encode(black_box(&message), DEFAULT_MAX_FRAME_LEN, &mut buf).unwrap();
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    for (name, message) in [
        ("set_request", set_request(42)),
        ("get_response", get_response(42)),
    ] {
        let mut bytes = BytesMut::new();
        frame::encode(&message, DEFAULT_MAX_FRAME_LEN, &mut bytes).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let decoded: Option<(Message, usize)> =
                    frame::decode_slice(black_box(&bytes), DEFAULT_MAX_FRAME_LEN).unwrap();
                decoded.unwrap()
            })
        });
    }
    group.finish();

    // What a reader does with one pipelined read: 16 frames through the codec.
    let mut batch = BytesMut::new();
    for id in 0..16 {
        frame::encode(&set_request(id), DEFAULT_MAX_FRAME_LEN, &mut batch).unwrap();
    }
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(16));
    group.bench_function("decode_16_set_requests", |b| {
        let mut codec = MessageCodec::new(DEFAULT_MAX_FRAME_LEN);
        b.iter(|| {
            let mut buf = batch.clone();
            let mut n = 0;
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                black_box(m);
                n += 1;
            }
            assert_eq!(n, 16);
        })
    });
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
