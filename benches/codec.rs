//! Framing throughput: a monitor-reply-shaped message (50k ports, ~18 MB, as ovsdb-server sends
//! for a large NB), many small messages back to back, and input cut into TCP-sized pieces.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ovn_nb_proxy::wire::{Chunk, FrameCodec};
use tokio_util::codec::Decoder;

/// A `monitor_cond_since` reply with `ports` Logical_Switch_Port rows.
fn monitor_reply(ports: usize) -> Vec<u8> {
    let mut s = String::from(
        r#"{"id":3,"result":[false,"00000000-0000-0000-0000-000000000000",{"Logical_Switch_Port":{"#,
    );
    for i in 0..ports {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#""{i:08x}-1111-2222-3333-444455556666":{{"initial":{{"name":"vm{i}.default","addresses":"0a:00:00:{:02x}:{:02x}:{:02x} 10.16.{}.{}","port_security":"0a:00:00:{:02x}:{:02x}:{:02x} 10.16.{}.{}","external_ids":["map",[["ls","ovn-default"],["pod","default/vm{i}"],["vendor","kube-ovn"]]],"options":["map",[["requested-chassis","node{}"]]],"up":true}}}}"#,
            (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff, (i >> 8) & 0xff, i & 0xff,
            (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff, (i >> 8) & 0xff, i & 0xff, i % 100
        ));
    }
    s.push_str(r#"}}],"error":null}"#);
    s.into_bytes()
}

/// `n` small messages as clients and servers interleave them (libovsdb adds newlines).
fn small_messages(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        match i % 3 {
            0 => out.extend_from_slice(br#"{"id":"echo","method":"echo","params":[]}"#),
            1 => out.extend_from_slice(
                format!(
                    "{{\"method\":\"transact\",\"params\":[\"OVN_Northbound\",{{\"op\":\"mutate\",\"table\":\"Logical_Switch_Port\",\"where\":[[\"_uuid\",\"==\",[\"uuid\",\"1fdf8404-0000-0000-0000-{i:012}\"]]],\"mutations\":[[\"options\",\"insert\",[\"map\",[[\"k\",\"v\\\"{i}\"]]]]]}}],\"id\":{i}}}\n"
                )
                .as_bytes(),
            ),
            _ => out.extend_from_slice(format!(r#"{{"id":{i},"result":[{{"count":1}},{{}}],"error":null}}"#).as_bytes()),
        }
    }
    out
}

/// Feeds `input` in pieces of `piece` bytes; returns the number of chunks handed out.
fn decode_all(input: &[u8], piece: usize, streaming: bool) -> usize {
    let mut codec = FrameCodec::new(usize::MAX);
    codec.set_streaming(streaming);
    let mut buf = BytesMut::with_capacity(piece.min(input.len()) * 2);
    let mut chunks = 0;
    for p in input.chunks(piece) {
        buf.extend_from_slice(p);
        while let Some(c) = codec.decode(&mut buf).expect("valid input") {
            black_box(matches!(c, Chunk::Message(_)));
            chunks += 1;
        }
    }
    chunks
}

fn bench(c: &mut Criterion) {
    let big = monitor_reply(50_000);
    let small = small_messages(30_000);
    let mut g = c.benchmark_group("codec");
    g.sample_size(20);

    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_with_input(BenchmarkId::new("monitor_reply_whole", big.len()), &big, |b, m| {
        b.iter(|| assert_eq!(decode_all(m, m.len(), false), 1))
    });
    g.bench_with_input(BenchmarkId::new("monitor_reply_streamed_64k_reads", big.len()), &big, |b, m| {
        b.iter(|| decode_all(m, 64 * 1024, true))
    });
    g.bench_with_input(BenchmarkId::new("monitor_reply_whole_1448b_reads", big.len()), &big, |b, m| {
        b.iter(|| assert_eq!(decode_all(m, 1448, false), 1))
    });

    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_with_input(BenchmarkId::new("small_messages_30k", small.len()), &small, |b, m| {
        b.iter(|| assert_eq!(decode_all(m, 64 * 1024, false), 30_000))
    });
    g.bench_with_input(BenchmarkId::new("small_messages_30k_97b_reads", small.len()), &small, |b, m| {
        b.iter(|| assert_eq!(decode_all(m, 97, false), 30_000))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
