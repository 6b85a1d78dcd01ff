//! `plan_transact` on the two commonest shapes that hit a migrating port, with a view of 1000
//! ports: a Kube-OVN whole-map `update` of options and an ovn-nbctl `set` (`mutate` + comment).
//! Both need an in-place rewrite, the costlier path.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ovn_nb_proxy::policy::{plan_transact, LspState, PolicyConfig, StaticView};
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
        assert!(plan_transact(&params, &view, &cfg).rewritten.is_some(), "{name} must take the rewrite path");
        group.bench_function(name, |b| b.iter(|| plan_transact(black_box(&params), &view, &cfg)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
