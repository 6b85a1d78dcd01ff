//! `plan_transact` on the two commonest shapes that hit a migrating port, with a view of 1000
//! ports: a Kube-OVN whole-map `update` of options and an ovn-nbctl `set` (`mutate` + comment).
//! Both need an in-place rewrite, the costlier path.
//!
//! Also the user-space work per message on the data path (`inspect_request` on what passes by),
//! on the proxy's port monitor (`LspCache` decoding a `<table-updates2>` into its rows), and in
//! the migration timelines (independent of how many migrations they hold).

use std::collections::BTreeMap;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ovn_nb_proxy::cache::LspCache;
use ovn_nb_proxy::policy::{plan_transact, LspState, PolicyConfig, StaticView};
use ovn_nb_proxy::proxy::rewrite::inspect_request;
use serde_json::{json, Value};

const PORTS: usize = 1000;
const MIGRATING: usize = 500;

fn uuid(i: usize) -> String {
    format!("{i:08x}-6e7f-4a81-8cbd-{i:012x}")
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn view() -> StaticView {
    let rows = (0..PORTS)
        .map(|i| {
            let pod = format!("ns1/vm{i}");
            let node = format!("node{}", i % 10);
            let mut row = LspState {
                uuid: uuid(i),
                name: format!("vm{i}.ns1"),
                options: map(&[("requested-chassis", &node)]),
                external_ids: map(&[("vendor", "kube-ovn"), ("ls", "ovn-default"), ("pod", &pod)]),
            };
            if i == MIGRATING {
                row.options = map(&[
                    ("arp_proxy", "true"),
                    ("requested-chassis", "node1,node2"),
                    ("activation-strategy", "rarp"),
                ]);
                row.external_ids.insert("migration-destination".into(), "node2".into());
                row.external_ids.insert("migration-phase".into(), "Running".into());
            }
            row
        })
        .collect();
    StaticView::new(rows)
}

fn kube_ovn_update() -> Value {
    json!(["OVN_Northbound",
        {"op": "update", "table": "Logical_Switch_Port", "row": {"options": ["map", [["arp_proxy", "true"]]]},
         "where": [["_uuid", "==", ["uuid", uuid(MIGRATING)]]]}])
}

fn nbctl_mutate() -> Value {
    json!(["OVN_Northbound",
        {"mutations": [["options", "delete", ["set", ["requested-chassis"]]],
                       ["options", "insert", ["map", [["requested-chassis", "node1"]]]]],
         "where": [["_uuid", "==", ["uuid", uuid(MIGRATING)]]], "table": "Logical_Switch_Port", "op": "mutate"},
        {"comment": "ovn-nbctl: ovn-nbctl set Logical_Switch_Port vm500.ns1 options:requested-chassis=node1",
         "op": "comment"}])
}

fn bench(c: &mut Criterion) {
    let view = view();
    let cfg = PolicyConfig::default();
    let mut group = c.benchmark_group("plan_transact");
    group.throughput(Throughput::Elements(1));
    for (name, params) in
        [("kube_ovn_whole_map_update", kube_ovn_update()), ("nbctl_set_mutate", nbctl_mutate())]
    {
        assert!(plan_transact(&params, &view, &cfg).rewrite().is_some(), "{name} must take the rewrite path");
        group.bench_function(name, |b| b.iter(|| plan_transact(black_box(&params), &view, &cfg)));
    }
    group.finish();
}

/// A `<table-updates2>` with `n` ports as the monitor's initial reply carries them.
fn initial_text(n: usize) -> String {
    let rows: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            let row = json!({"initial": {"name": format!("vm{i}.ns1"),
                "options": ["map", [["requested-chassis", format!("node{}", i % 10)]]],
                "external_ids": ["map", [["vendor", "kube-ovn"], ["ls", "ovn-default"], ["pod", format!("ns1/vm{i}")]]]}});
            (uuid(i), row)
        })
        .collect();
    json!({"Logical_Switch_Port": rows}).to_string()
}

fn monitor(c: &mut Criterion) {
    let mut group = c.benchmark_group("port_monitor");
    let initial = initial_text(20_000);
    group.throughput(Throughput::Elements(20_000));
    group.bench_function("initial_20000_ports", |b| {
        b.iter(|| LspCache::new().reset(black_box(&initial)).map(|t| t.len()))
    });
    let cache = LspCache::new();
    cache.reset(&initial).expect("initial");
    // Applied twice it adds and removes the key: every iteration is a real change.
    let update = json!({"Logical_Switch_Port": {uuid(MIGRATING): {"modify":
        {"external_ids": ["map", [["bench", "1"]]]}}}})
    .to_string();
    group.throughput(Throughput::Elements(1));
    group.bench_function("update2_one_port_of_20000", |b| {
        b.iter(|| {
            let touched = cache.apply(black_box(&update)).expect("update");
            touched.iter().filter_map(|t| t.after_state()).count()
        })
    });
    group.finish();
}

fn data_path(c: &mut Criterion) {
    let view = view();
    let cfg = PolicyConfig::default();
    let untagged = uuid(7);
    let messages = [
        ("echo", json!({"id": "echo", "method": "echo", "params": []})),
        (
            "transact_switch",
            json!({"id": 3, "method": "transact", "params": ["OVN_Northbound",
            {"op": "update", "table": "Logical_Switch", "where": [["_uuid", "==", ["uuid", uuid(1)]]],
             "row": {"external_ids": ["map", [["bench", "1"]]]}}]}),
        ),
        (
            "transact_untagged_port",
            json!({"id": 4, "method": "transact", "params": ["OVN_Northbound",
            {"op": "update", "table": "Logical_Switch_Port", "where": [["_uuid", "==", ["uuid", untagged]]],
             "row": {"external_ids": ["map", [["bench", "1"]]]}}]}),
        ),
    ];
    let mut group = c.benchmark_group("inspect_request");
    group.throughput(Throughput::Elements(1));
    for (name, msg) in messages {
        let raw = Bytes::from(msg.to_string());
        group.bench_function(name, |b| b.iter(|| inspect_request(black_box(&raw), &view, &cfg).is_some()));
    }
    group.finish();
}

/// What a port write costs the session when nothing migrates (the cache synchronised, no port
/// tagged, nothing due): the byte tests that let it pass unparsed, against 20 000 cached ports.
fn fast_path(c: &mut Criterion) {
    use ovn_nb_proxy::proxy::rewrite::{may_touch_ports, must_plan, PortsView};
    use ovn_nb_proxy::timeline::Timelines;
    let cfg = PolicyConfig::default();
    let policy = std::sync::RwLock::new(std::sync::Arc::new(cfg.clone()));
    let cache = LspCache::new();
    cache.track(&cfg.destination_key);
    cache.reset(&initial_text(20_000)).expect("initial");
    let timelines = Timelines::new();
    let view = PortsView { cache: &cache, timelines: &timelines, finalize: false };
    assert!(view.quiet(&cfg), "no port is tagged");
    let writes = [
        (
            "nbctl_set_untagged_port",
            json!({"id": 5, "method": "transact", "params": ["OVN_Northbound",
            {"mutations": [["external_ids", "insert", ["map", [["bench", "1"]]]]],
             "where": [["_uuid", "==", ["uuid", uuid(7)]]], "table": "Logical_Switch_Port", "op": "mutate"},
            {"comment": "ovn-nbctl: ovn-nbctl set Logical_Switch_Port vm7.ns1 external_ids:bench=1", "op": "comment"}]}),
        ),
        (
            "kube_ovn_update_untagged_port",
            json!({"id": 6, "method": "transact", "params": ["OVN_Northbound",
            {"op": "update", "table": "Logical_Switch_Port", "where": [["_uuid", "==", ["uuid", uuid(7)]]],
             "row": {"options": ["map", [["requested-chassis", "node3"]]],
                     "external_ids": ["map", [["vendor", "kube-ovn"], ["ls", "ovn-default"], ["pod", "ns1/vm7"]]]}}]}),
        ),
    ];
    let mut group = c.benchmark_group("fast_path");
    group.throughput(Throughput::Elements(1));
    for (name, msg) in writes {
        let raw = Bytes::from(msg.to_string());
        assert!(may_touch_ports(&raw) && !must_plan(&raw, &cfg, view.quiet(&cfg)), "{name} passes unparsed");
        group.bench_function(name, |b| {
            b.iter(|| {
                let raw = black_box(&raw);
                let cfg = policy.read().map(|p| p.clone()).expect("lock");
                may_touch_ports(raw) && must_plan(raw, &cfg, view.quiet(&cfg))
            })
        });
    }
    group.finish();
}

/// The migration timelines' cost per change, empty and at production's worst: 50 000 ports
/// migrating and the 10 000 finished migrations kept (each new one finished drops the oldest).
/// The cost must not grow with the history.
fn timelines(c: &mut Criterion) {
    use ovn_nb_proxy::timeline::Timelines;
    let cfg = PolicyConfig::default();
    let now = std::time::SystemTime::now();
    let port = |name: String, ext: &[(&str, &str)], rc: &str| LspState {
        uuid: String::new(),
        name,
        options: map(&[("requested-chassis", rc)]),
        external_ids: map(ext),
    };
    let mut group = c.benchmark_group("timelines");
    group.throughput(Throughput::Elements(1));
    for (label, in_progress, finished) in
        [("empty", 0, 0), ("50000_migrating_10000_finished", 50_000, 10_000)]
    {
        let t = Timelines::new();
        for i in 0..in_progress {
            t.observe_nb(&port(format!("m{i}"), &[("migration-destination", "hv2")], "hv1"), &cfg, now);
        }
        for i in 0..finished {
            let name = format!("f{i}");
            t.observe_nb(&port(name.clone(), &[("migration-destination", "hv2")], "hv1"), &cfg, now);
            let done = [("migration-destination", "hv2"), ("migration-phase", "succeeded")];
            t.observe_nb(&port(name, &done, "hv2"), &cfg, now);
        }
        let mut n = 0u64;
        group.bench_function(format!("a_migration_started_and_finished_{label}"), |b| {
            b.iter(|| {
                n += 1;
                let name = format!("b{n}");
                t.observe_nb(&port(name.clone(), &[("migration-destination", "hv3")], "hv1"), &cfg, now);
                let done = [("migration-destination", "hv3"), ("migration-phase", "failed")];
                black_box(t.observe_nb(&port(name, &done, "hv1"), &cfg, now));
            })
        });
        assert!(t.len() <= in_progress + 10_000, "finished ones are bounded");
    }
    group.finish();
}

/// Bulk transactions on a view of 5000 ports: tagging all of them (5000 `mutate`s by uuid,
/// each fix appended), and inserting 5000 new untagged ones (no op tags: read no further than
/// each op's head). `inspect_request` is what a session does: read, plan, splice.
fn bulk(c: &mut Criterion) {
    const N: usize = 5000;
    let rows = (0..N)
        .map(|i| LspState {
            uuid: uuid(i),
            name: format!("b{i}"),
            options: map(&[("requested-chassis", "hv1")]),
            external_ids: map(&[("bulk", "target")]),
        })
        .collect();
    let view = StaticView::new(rows);
    let cfg = PolicyConfig::default();
    let envelope = |ops: Vec<Value>| {
        let mut params = vec![json!("OVN_Northbound")];
        params.extend(ops);
        Bytes::from(
            serde_json::to_vec(&json!({"id": 1, "method": "transact", "params": params})).expect("json"),
        )
    };
    let tag = envelope(
        (0..N)
            .map(|i| json!({"op": "mutate", "table": "Logical_Switch_Port", "where": [["_uuid", "==", ["uuid", uuid(i)]]],
                            "mutations": [["external_ids", "insert", ["map", [["migration-destination", "hv2"]]]]]}))
            .collect(),
    );
    let insert = envelope(
        (0..N)
            .map(|i| {
                json!({"op": "insert", "table": "Logical_Switch_Port", "uuid-name": format!("n{i}"),
                            "row": {"name": format!("new{i}"), "addresses": "0a:00:00:00:00:01 10.0.0.1",
                                    "options": ["map", [["requested-chassis", "node1"]]]}})
            })
            .collect(),
    );
    let mut group = c.benchmark_group("bulk");
    group.sample_size(10);
    group.throughput(Throughput::Elements(N as u64));
    let planned = inspect_request(&tag, &view, &cfg).expect("a transact");
    assert_eq!(planned.plan.changes.len(), N, "every port tagged is fixed");
    group.bench_function("inspect_request_5000_mutates_tagging", |b| {
        b.iter(|| inspect_request(black_box(&tag), &view, &cfg).and_then(|i| i.rewritten()))
    });
    group.bench_function("inspect_request_5000_untagged_inserts", |b| {
        b.iter(|| inspect_request(black_box(&insert), &view, &cfg))
    });
    // What a session does on the event loop with a big message before it is handed to the
    // blocking pool: the byte tests, over the whole message (here 1.4 MB).
    group.bench_function("byte_tests_5000_untagged_inserts", |b| {
        use ovn_nb_proxy::proxy::rewrite::{cancelled_id, may_touch_ports, must_plan};
        b.iter(|| {
            let raw = black_box(&insert);
            (cancelled_id(raw), may_touch_ports(raw), must_plan(raw, &cfg, true))
        })
    });
    group.finish();
}

criterion_group!(benches, bench, monitor, data_path, fast_path, timelines, bulk);
criterion_main!(benches);
