//! Load invariant: 20 concurrent writers for `LOAD_SECS` seconds (default 60) through the proxy,
//! against a real NB `ovsdb-server`, then every port checked against the contract.
//!
//! Each writer owns 6 ports and is the only one to write their `options` and their migration
//! tags, so it can compute what the contract (README, "The contract") says each port's options
//! must be — independently: nothing here calls the policy code. It mixes
//! * CMS-aware writes: migrations started (with and without a source tag, with strategy
//!   overrides, KubeVirt-style phases), moved to a new destination, succeeded, failed, aborted
//!   (destination tag removed), tags cleared; as whole-map `update`s of `external_ids` on its
//!   private ports and as `mutate`s on its shared ports;
//! * CMS-unaware writes on its ports, tagged or not: whole-map `update`s of `options` (sometimes
//!   with a stale `requested-chassis`), and `mutate`s of one option key;
//! * markers of its own (`external_ids:g<writer>`) on other writers' shared ports, by `mutate`.
//!
//! Every write the server acknowledges is remembered; at the end every port's `options` and
//! `external_ids` must be exactly what the acknowledged writes plus the contract give. The
//! proxy rewrites synchronously, but its port cache may lag a writer's previous write by one
//! monitor round trip, and the reconciler repairs what a rewrite computed from a stale cache
//! got wrong: so the final check polls (with a deadline) for the reconciler to settle.

use crate::common::model::*;
use crate::common::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn concurrent_writers_end_as_the_contract_says() {
    let _turn = heavy();
    let secs: u64 = std::env::var("LOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let nb = nb();

    // The ports, on one switch, each pinned to a chassis; seeded directly.
    let (initial, ops) = seed_writers("sw0", true);
    Direct { raw: Raw::connect(&nb.server.socket()), id: 0 }.commit(ops);

    let mut proxy = Proxy::start(&nb.server.unix_remote(), &[]);
    proxy.wait_log("port cache synchronised", Duration::from_secs(10));

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = initial
        .into_iter()
        .enumerate()
        .map(|(w, ports)| {
            let stop = stop.clone();
            let path = proxy.unix.clone();
            std::thread::spawn(move || {
                let mut link = Direct { raw: Raw::connect(&path), id: 0 };
                let mut writer = Writer::new(w, ports);
                writer.run(&mut link, &stop);
                writer
            })
        })
        .collect();
    while started.elapsed() < Duration::from_secs(secs) && proxy.is_running() {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let writers: Vec<Writer> = handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| panic!("a writer failed (see above)")))
        .collect();
    let ran = started.elapsed();
    assert!(proxy.is_running(), "the proxy died under load:\n{}", proxy.log_text());

    // What every port must look like.
    let expected = expected(&writers);

    // The proxy rewrote synchronously; the reconciler may still be repairing what a stale cache
    // made a rewrite get wrong. Poll until the database matches, 30 s at most.
    let deadline = Instant::now() + Duration::from_secs(30);
    let settle = Instant::now();
    let mut reads = 0;
    let mismatches = loop {
        reads += 1;
        let actual = read_ports(&nb.server.socket());
        let mut bad = Vec::new();
        for (port, want) in &expected {
            match actual.get(port) {
                Some(got) if got == want => {}
                got => bad.push(format!("{port}:\n  want {want:?}\n  got  {got:?}")),
            }
        }
        if bad.is_empty() || Instant::now() > deadline {
            break bad;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = proxy.log_text();
    let count = |needle: &str| {
        log.lines().filter(|l| l.contains("ovn_nb_proxy::audit") && l.contains(needle)).count()
    };
    let (rewrites, reconciles) = (count(": rewrite "), count(": reconcile "));

    let total = total(&writers);
    println!(
        "load: {WRITERS} writers for {:.1} s: {} acknowledged transactions ({:.0}/s): {total}; proxy: {rewrites} \
         rewrites, {reconciles} reconciles; {} ports checked, {} wrong after {reads} reads of the database in {:.2} s",
        ran.as_secs_f64(),
        total.transactions,
        total.transactions as f64 / ran.as_secs_f64(),
        expected.len(),
        mismatches.len(),
        settle.elapsed().as_secs_f64(),
    );
    if !mismatches.is_empty() {
        panic!(
            "{} of {} ports differ from what the contract and the acknowledged writes say:\n{}",
            mismatches.len(),
            expected.len(),
            explain(&mismatches, &writers, &log),
        );
    }
    assert!(total.started > 0 && total.unaware_updates > 0 && total.markers > 0, "the mix did not run");
}
