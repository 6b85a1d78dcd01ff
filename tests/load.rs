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

mod common;
use common::*;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const WRITERS: usize = 20;
const PORTS_PER_WRITER: usize = 6;
/// Ports 0 and 1 of each writer are private (tags written as whole maps); 5 is never tagged.
const PRIVATE: usize = 2;
const NEVER_TAGGED: usize = 5;
const CHASSIS: usize = 6;

const DST: &str = "migration-destination";
const SRC: &str = "migration-source";
const PHASE: &str = "migration-phase";
const STRAT: &str = "migration-activation-strategy";
const RC: &str = "requested-chassis";
const AS: &str = "activation-strategy";
const TAGS: [&str; 4] = [DST, SRC, PHASE, STRAT];

type StrMap = BTreeMap<String, String>;

fn port_name(w: usize, j: usize) -> String {
    format!("w{w:02}p{j}")
}

fn hv(i: usize) -> String {
    format!("hv{}", i % CHASSIS)
}

/// xorshift64*: deterministic per writer, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------------------------
// The contract, written out again from the README.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    InProgress,
    Succeeded,
    Failed,
}

fn trimmed(m: &StrMap, k: &str) -> Option<String> {
    m.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn phase(ext: &StrMap) -> Phase {
    match trimmed(ext, PHASE).map(|p| p.to_ascii_lowercase()).as_deref() {
        Some("succeeded" | "completed") => Phase::Succeeded,
        Some("failed" | "aborted") => Phase::Failed,
        _ => Phase::InProgress,
    }
}

fn first_chassis(options: &StrMap) -> Option<String> {
    options
        .get(RC)
        .and_then(|rc| rc.split(',').next())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// One port as its owner knows it: the acknowledged state (policy applied), and the source the
/// migration in progress started from (for migrations without a source tag).
#[derive(Debug, Clone, Default)]
struct PortModel {
    options: StrMap,
    /// The owner's keys only (tags and its marker); other writers' markers are kept apart.
    ext: StrMap,
    source_when_tagged: Option<String>,
    /// The last acknowledged writes (what was sent, the options expected after it), for the
    /// failure message.
    history: VecDeque<String>,
}

impl PortModel {
    fn migrating(&self) -> Option<String> {
        trimmed(&self.ext, DST)
    }

    fn source(&self) -> Option<String> {
        trimmed(&self.ext, SRC).or_else(|| self.source_when_tagged.clone())
    }

    /// Applies an acknowledged write: `write` changes the columns as the database does, then
    /// the contract sets the two keys from the state after the write.
    fn apply(&mut self, what: &Value, write: impl FnOnce(&mut StrMap, &mut StrMap)) {
        let before = self.clone();
        write(&mut self.options, &mut self.ext);
        match (before.migrating(), self.migrating()) {
            (None, Some(_)) => self.source_when_tagged = first_chassis(&self.options),
            (Some(_), None) => self.source_when_tagged = None,
            _ => {}
        }
        let set = |o: &mut StrMap, rc: String, strategy: Option<String>| {
            o.insert(RC.into(), rc);
            match strategy {
                Some(s) => o.insert(AS.into(), s),
                None => o.remove(AS),
            };
        };
        // The write leaves a finished migration finished, to the same destination: a
        // requested-chassis it sets to one chassis of its own is the writer's choice.
        let continuing = before.migrating() == self.migrating() && phase(&before.ext) == phase(&self.ext);
        let chosen_elsewhere = |o: &StrMap, final_: &str| {
            o.get(RC)
                .map(|rc| rc.trim())
                .is_some_and(|rc| !rc.is_empty() && !rc.contains(',') && rc != final_)
        };
        match self.migrating() {
            Some(dst) => {
                let src = self.source().expect("the test always gives a migration a source");
                assert_ne!(src, dst, "the test never migrates to the source");
                match phase(&self.ext) {
                    Phase::InProgress => {
                        let strategy = match self.ext.get(STRAT) {
                            Some(s) if s.trim().is_empty() || s.trim().eq_ignore_ascii_case("none") => None,
                            Some(s) => Some(s.trim().to_string()),
                            None => Some("rarp".to_string()),
                        };
                        set(&mut self.options, format!("{src},{dst}"), strategy);
                    }
                    Phase::Succeeded if continuing && chosen_elsewhere(&self.options, &dst) => {}
                    Phase::Succeeded => set(&mut self.options, dst, None),
                    Phase::Failed if continuing && chosen_elsewhere(&self.options, &src) => {}
                    Phase::Failed => set(&mut self.options, src, None),
                }
            }
            None => {
                // Destination removed while in progress, options still the proxy's: abort.
                if let (Some(dst), Some(src)) = (before.migrating(), before.source()) {
                    if phase(&before.ext) == Phase::InProgress
                        && self.options.get(RC) == Some(&format!("{src},{dst}"))
                    {
                        set(&mut self.options, src, None);
                    }
                }
            }
        }
        if self.history.len() == 8 {
            self.history.pop_front();
        }
        self.history.push_back(format!("{what} => options {:?}", self.options));
    }
}

// ---------------------------------------------------------------------------------------------
// OVSDB notation.

fn map_json(m: &StrMap) -> Value {
    json!(["map", m.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()])
}

fn parse_map(v: &Value) -> StrMap {
    v[1].as_array()
        .map(|pairs| {
            pairs
                .iter()
                .map(|p| (p[0].as_str().unwrap_or("").to_string(), p[1].as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn by_name(port: &str) -> Value {
    json!([["name", "==", port]])
}

/// Sends one transaction and waits for its reply; panics on any error (a write the server
/// refused would make the bookkeeping wrong, and none of these should be refused).
fn transact(raw: &mut Raw, id: &mut u64, ops: Vec<Value>) {
    *id += 1;
    let mut params = vec![json!("OVN_Northbound")];
    params.extend(ops);
    let req = json!({"id": *id, "method": "transact", "params": params});
    raw.send(&serde_json::to_vec(&req).expect("json"));
    loop {
        let msg = raw.recv();
        if msg["method"] == "echo" {
            raw.send(
                &serde_json::to_vec(&json!({"id": msg["id"], "result": msg["params"], "error": null}))
                    .expect("json"),
            );
            continue;
        }
        assert_eq!(msg["id"], json!(*id), "reply to another request: {msg}");
        assert!(msg["error"].is_null(), "transaction refused: {msg}\nrequest: {req}");
        let results = msg["result"].as_array().expect("result array");
        assert_eq!(results.len(), params.len() - 1, "one result per op: {msg}\nrequest: {req}");
        assert!(results.iter().all(|r| r.get("error").is_none()), "an op failed: {msg}\nrequest: {req}");
        return;
    }
}

// ---------------------------------------------------------------------------------------------
// The writers.

#[derive(Debug, Default)]
struct Tally {
    transactions: u64,
    started: u64,
    moved: u64,
    succeeded: u64,
    failed: u64,
    aborted: u64,
    cleared: u64,
    unaware_updates: u64,
    unaware_mutates: u64,
    markers: u64,
}

struct Writer {
    w: usize,
    rng: Rng,
    ports: Vec<PortModel>,
    /// My marker on other writers' shared ports: (owner, index) → last acknowledged value.
    markers: HashMap<(usize, usize), String>,
    seq: u64,
    id: u64,
    tally: Tally,
}

impl Writer {
    fn new(w: usize, initial: Vec<PortModel>) -> Writer {
        Writer {
            w,
            rng: Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1)),
            ports: initial,
            markers: HashMap::new(),
            seq: 0,
            id: 0,
            tally: Tally::default(),
        }
    }

    fn run(&mut self, raw: &mut Raw, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.seq += 1;
            match self.rng.below(100) {
                0..=39 => {
                    let j = self.rng.below(NEVER_TAGGED);
                    self.tag_step(raw, j);
                }
                40..=59 => {
                    let j = self.rng.below(PORTS_PER_WRITER);
                    self.unaware_update(raw, j);
                }
                60..=79 => {
                    let j = self.rng.below(PORTS_PER_WRITER);
                    self.unaware_mutate(raw, j);
                }
                _ => self.marker(raw),
            }
            self.tally.transactions += 1;
        }
    }

    /// Writes the owner's new tags on port `j` (whole map on private ports, mutate elsewhere)
    /// and records the result.
    fn write_tags(&mut self, raw: &mut Raw, j: usize, tags: StrMap) {
        let port = port_name(self.w, j);
        let mut ext = self.ports[j].ext.clone();
        for t in TAGS {
            ext.remove(t);
        }
        ext.extend(tags.clone());
        let op = if j < PRIVATE {
            json!({"op": "update", "table": "Logical_Switch_Port", "where": by_name(&port),
                   "row": {"external_ids": map_json(&ext)}})
        } else {
            json!({"op": "mutate", "table": "Logical_Switch_Port", "where": by_name(&port),
                   "mutations": [["external_ids", "delete", ["set", TAGS]], ["external_ids", "insert", map_json(&tags)]]})
        };
        transact(raw, &mut self.id, vec![op.clone()]);
        self.ports[j].apply(&op, |_, e| *e = ext);
    }

    fn other_chassis(&mut self, not: &[Option<String>]) -> String {
        loop {
            let c = hv(self.rng.below(CHASSIS));
            if !not.iter().any(|n| n.as_deref() == Some(c.as_str())) {
                return c;
            }
        }
    }

    /// One step of a migration's life on port `j`.
    fn tag_step(&mut self, raw: &mut Raw, j: usize) {
        let m = self.ports[j].clone();
        let tags_now: StrMap =
            TAGS.iter().filter_map(|t| m.ext.get(*t).map(|v| (t.to_string(), v.clone()))).collect();
        let mut tags = tags_now.clone();
        match m.migrating() {
            None => {
                // Start: with a source tag, or from requested-chassis when it names one.
                tags.clear();
                let from_rc = first_chassis(&m.options);
                let src = if from_rc.is_none() || self.rng.chance(40) {
                    let s = self.other_chassis(&[]);
                    tags.insert(SRC.into(), format!(" {s}"));
                    s
                } else {
                    from_rc.unwrap_or_default()
                };
                let dst = self.other_chassis(&[Some(src)]);
                tags.insert(DST.into(), if self.rng.chance(20) { format!("{dst} ") } else { dst });
                if self.rng.chance(30) {
                    tags.insert(
                        PHASE.into(),
                        self.rng.pick(&["Scheduling", "Running", "TargetReady"]).into(),
                    );
                }
                if self.rng.chance(15) {
                    tags.insert(STRAT.into(), self.rng.pick(&["garp", "none", "", " NONE "]).into());
                }
                self.tally.started += 1;
            }
            Some(dst) if phase(&m.ext) == Phase::InProgress => match self.rng.below(6) {
                0 => {
                    tags.insert(
                        PHASE.into(),
                        self.rng.pick(&["Succeeded", "completed", " succeeded"]).into(),
                    );
                    self.tally.succeeded += 1;
                }
                1 => {
                    tags.insert(PHASE.into(), self.rng.pick(&["Failed", "aborted", "FAILED"]).into());
                    self.tally.failed += 1;
                }
                2 => {
                    // Abort: the destination tag goes (sometimes all the tags).
                    if self.rng.chance(50) {
                        tags.clear();
                    } else {
                        tags.remove(DST);
                    }
                    self.tally.aborted += 1;
                }
                3 => {
                    let src = m.source();
                    let new = self.other_chassis(&[src, Some(dst)]);
                    tags.insert(DST.into(), new);
                    self.tally.moved += 1;
                }
                4 => {
                    tags.insert(PHASE.into(), self.rng.pick(&["Running", "Scheduling"]).into());
                }
                _ => {
                    if tags.remove(STRAT).is_none() {
                        tags.insert(STRAT.into(), self.rng.pick(&["garp", "none"]).into());
                    }
                }
            },
            Some(_) => {
                // Succeeded or failed: the CMS clears the tags.
                tags.clear();
                self.tally.cleared += 1;
            }
        }
        self.write_tags(raw, j, tags);
    }

    /// A writer that knows nothing of migration replaces the whole options map.
    fn unaware_update(&mut self, raw: &mut Raw, j: usize) {
        let port = port_name(self.w, j);
        let mut options = StrMap::new();
        options.insert("own".into(), format!("u{}", self.seq));
        if self.rng.chance(50) {
            options.insert("x".into(), self.rng.below(1000).to_string());
        }
        if self.rng.chance(70) {
            // what the writer believes the chassis is (stale or not)
            options.insert(RC.into(), hv(self.rng.below(CHASSIS)));
        }
        if self.rng.chance(10) {
            options.insert(AS.into(), "stale".into());
        }
        let op = json!({"op": "update", "table": "Logical_Switch_Port", "where": by_name(&port),
                        "row": {"options": map_json(&options)}});
        transact(raw, &mut self.id, vec![op.clone()]);
        self.ports[j].apply(&op, |o, _| *o = options);
        self.tally.unaware_updates += 1;
    }

    /// A writer that knows nothing of migration sets one key (delete + insert), sometimes a
    /// policy key.
    fn unaware_mutate(&mut self, raw: &mut Raw, j: usize) {
        let port = port_name(self.w, j);
        let (key, value) = match self.rng.below(10) {
            0 => (RC.to_string(), hv(self.rng.below(CHASSIS))),
            1 => (AS.to_string(), "stale".to_string()),
            _ => ("own".to_string(), format!("m{}", self.seq)),
        };
        let op = json!({"op": "mutate", "table": "Logical_Switch_Port", "where": by_name(&port),
                        "mutations": [["options", "delete", ["set", [key]]],
                                      ["options", "insert", ["map", [[key, value]]]]]});
        transact(raw, &mut self.id, vec![op.clone()]);
        self.ports[j].apply(&op, |o, _| {
            o.insert(key, value);
        });
        self.tally.unaware_mutates += 1;
    }

    /// My marker on another writer's shared port.
    fn marker(&mut self, raw: &mut Raw) {
        let owner = (self.w + 1 + self.rng.below(WRITERS - 1)) % WRITERS;
        let j = PRIVATE + self.rng.below(PORTS_PER_WRITER - PRIVATE);
        let key = format!("g{:02}", self.w);
        let value = self.seq.to_string();
        let op = json!({"op": "mutate", "table": "Logical_Switch_Port", "where": by_name(&port_name(owner, j)),
                        "mutations": [["external_ids", "delete", ["set", [key]]],
                                      ["external_ids", "insert", ["map", [[key, value]]]]]});
        transact(raw, &mut self.id, vec![op]);
        self.markers.insert((owner, j), value);
        self.tally.markers += 1;
    }
}

// ---------------------------------------------------------------------------------------------

/// Every port's (options, external_ids), read directly from the database.
fn read_ports(nb: &Nb) -> HashMap<String, (StrMap, StrMap)> {
    let mut raw = Raw::connect(&nb.server.socket());
    let req = json!({"id": 1, "method": "transact", "params": ["OVN_Northbound",
        {"op": "select", "table": "Logical_Switch_Port", "where": [], "columns": ["name", "options", "external_ids"]}]});
    raw.send(&serde_json::to_vec(&req).expect("json"));
    let reply = raw.recv();
    reply["result"][0]["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_string(),
                (parse_map(&r["options"]), parse_map(&r["external_ids"])),
            )
        })
        .collect()
}

#[test]
fn concurrent_writers_end_as_the_contract_says() {
    let secs: u64 = std::env::var("LOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let nb = nb();

    // The ports, on one switch, each pinned to a chassis; seeded directly.
    let mut initial: Vec<Vec<PortModel>> = Vec::new();
    let mut ops = Vec::new();
    let mut refs = Vec::new();
    for w in 0..WRITERS {
        let mut mine = Vec::new();
        for j in 0..PORTS_PER_WRITER {
            let mut m = PortModel::default();
            m.options.insert(RC.into(), hv(w + j));
            m.options.insert("own".into(), "seed".into());
            m.ext.insert("owner".into(), format!("w{w:02}"));
            ops.push(json!({"op": "insert", "table": "Logical_Switch_Port", "uuid-name": format!("p{w}_{j}"),
                "row": {"name": port_name(w, j), "options": map_json(&m.options), "external_ids": map_json(&m.ext)}}));
            refs.push(json!(["named-uuid", format!("p{w}_{j}")]));
            mine.push(m);
        }
        initial.push(mine);
    }
    ops.push(
        json!({"op": "insert", "table": "Logical_Switch", "row": {"name": "sw0", "ports": ["set", refs]}}),
    );
    let mut seed = Raw::connect(&nb.server.socket());
    transact(&mut seed, &mut 0, ops);
    drop(seed);

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
                let mut raw = Raw::connect(&path);
                let mut writer = Writer::new(w, ports);
                writer.run(&mut raw, &stop);
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
    let mut expected: HashMap<String, (StrMap, StrMap)> = HashMap::new();
    for wr in &writers {
        for (j, m) in wr.ports.iter().enumerate() {
            expected.insert(port_name(wr.w, j), (m.options.clone(), m.ext.clone()));
        }
    }
    for wr in &writers {
        for ((owner, j), value) in &wr.markers {
            let e = expected.get_mut(&port_name(*owner, *j)).expect("port");
            e.1.insert(format!("g{:02}", wr.w), value.clone());
        }
    }

    // The proxy rewrote synchronously; the reconciler may still be repairing what a stale cache
    // made a rewrite get wrong. Poll until the database matches, 30 s at most.
    let deadline = Instant::now() + Duration::from_secs(30);
    let settle = Instant::now();
    let mut reads = 0;
    let mismatches = loop {
        reads += 1;
        let actual = read_ports(&nb);
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

    let mut total = Tally::default();
    for wr in &writers {
        let t = &wr.tally;
        total.transactions += t.transactions;
        total.started += t.started;
        total.moved += t.moved;
        total.succeeded += t.succeeded;
        total.failed += t.failed;
        total.aborted += t.aborted;
        total.cleared += t.cleared;
        total.unaware_updates += t.unaware_updates;
        total.unaware_mutates += t.unaware_mutates;
        total.markers += t.markers;
    }
    println!(
        "load: {WRITERS} writers for {:.1} s: {} acknowledged transactions ({:.0}/s): {} migrations started, {} moved, \
         {} succeeded, {} failed, {} aborted, {} tag clears, {} unaware option updates, {} unaware option mutates, \
         {} markers on others' ports; proxy: {rewrites} rewrites, {reconciles} reconciles; {} ports checked, \
         {} wrong after {reads} reads of the database in {:.2} s",
        ran.as_secs_f64(),
        total.transactions,
        total.transactions as f64 / ran.as_secs_f64(),
        total.started,
        total.moved,
        total.succeeded,
        total.failed,
        total.aborted,
        total.cleared,
        total.unaware_updates,
        total.unaware_mutates,
        total.markers,
        expected.len(),
        mismatches.len(),
        settle.elapsed().as_secs_f64(),
    );
    if !mismatches.is_empty() {
        // For each wrong port (5 at most): its owner's last acknowledged writes, and the proxy's
        // last audit and warning lines about it.
        let mut detail = String::new();
        for m in mismatches.iter().take(5) {
            detail.push_str(m);
            detail.push('\n');
            let port = m.split(':').next().unwrap_or_default();
            let owner: usize = port[1..3].parse().unwrap_or(0);
            let j: usize = port[4..].parse().unwrap_or(0);
            detail.push_str("  owner's last acknowledged writes:\n");
            for h in &writers[owner].ports[j].history {
                detail.push_str(&format!("    {h}\n"));
            }
            detail.push_str("  proxy's last lines about it:\n");
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(&format!("port={port} "))).collect();
            for l in &lines[lines.len().saturating_sub(10)..] {
                detail.push_str(&format!("    {l}\n"));
            }
        }
        panic!(
            "{} of {} ports differ from what the contract and the acknowledged writes say:\n{detail}",
            mismatches.len(),
            expected.len(),
        );
    }
    assert!(total.started > 0 && total.unaware_updates > 0 && total.markers > 0, "the mix did not run");
}
