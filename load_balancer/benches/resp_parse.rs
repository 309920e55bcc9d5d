//! The RESP door's request parser against the `redis-protocol` crate's
//! RESP2 decoder, on what clients send: a pipeline of 16 `SET`s (as
//! redis-benchmark -P 16 does), one `GET`, and a 1 MiB value arriving in
//! 64 KiB reads (the crate re-parses a partial frame from its start on
//! every read; ours goes on where it stopped).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use semikv_lb::door::resp::parse::Parser;

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn pipeline() -> Vec<u8> {
    (0..16)
        .flat_map(|i| command(&[b"SET", format!("key:{i:012}").as_bytes(), b"xxx"]))
        .collect()
}

fn ours(input: &[u8], chunk: usize) -> usize {
    let mut parser = Parser::new(16 << 20);
    let mut buf = BytesMut::with_capacity(chunk);
    let mut n = 0;
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(args) = parser.next(&mut buf).unwrap() {
            n += args.len();
        }
    }
    n
}

fn theirs(input: &[u8], chunk: usize) -> usize {
    use redis_protocol::resp2::decode::decode_bytes_mut;
    use redis_protocol::resp2::types::BytesFrame;
    let mut buf = BytesMut::with_capacity(chunk);
    let mut n = 0;
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some((frame, _, _)) = decode_bytes_mut(&mut buf).unwrap() {
            if let BytesFrame::Array(args) = frame {
                n += args.len();
            }
        }
    }
    n
}

fn parse(c: &mut Criterion) {
    let cases = [
        ("pipeline_16_sets", pipeline(), 64 * 1024),
        (
            "one_get",
            command(&[b"GET", b"key:000000000001"]),
            64 * 1024,
        ),
        (
            "set_1mib_in_64kib_reads",
            command(&[b"SET", b"k", &vec![b'v'; 1 << 20]]),
            64 * 1024,
        ),
    ];
    for (name, input, chunk) in cases {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(input.len() as u64));
        assert_eq!(ours(&input, chunk), theirs(&input, chunk));
        group.bench_function("semikv", |b| b.iter(|| ours(black_box(&input), chunk)));
        group.bench_function("redis-protocol", |b| {
            b.iter(|| theirs(black_box(&input), chunk))
        });
        group.finish();
    }
}

criterion_group!(benches, parse);
criterion_main!(benches);
