//! The load test's writers and the contract they are checked against, shared by `load.rs`
//! (steady state) and `chaos.rs` (the same writers while things are killed around them).
//!
//! Each writer owns 6 ports and is the only one to write their `options` and their migration
//! tags, so it can compute what the contract (README, "The contract") says each port's options
//! must be, independently: nothing here calls the policy code.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Value};

use super::Raw;

pub const WRITERS: usize = 20;
pub const PORTS_PER_WRITER: usize = 6;
/// Ports 0 and 1 of each writer are private (tags written as whole maps); 5 is never tagged.
pub const PRIVATE: usize = 2;
pub const NEVER_TAGGED: usize = 5;
pub const CHASSIS: usize = 6;

pub const DST: &str = "migration-destination";
pub const SRC: &str = "migration-source";
pub const PHASE: &str = "migration-phase";
pub const STRAT: &str = "migration-activation-strategy";
pub const RC: &str = "requested-chassis";
pub const AS: &str = "activation-strategy";
pub const TAGS: [&str; 4] = [DST, SRC, PHASE, STRAT];

pub use super::StrMap;

pub fn port_name(w: usize, j: usize) -> String {
    format!("w{w:02}p{j}")
}

pub fn hv(i: usize) -> String {
    format!("hv{}", i % CHASSIS)
}

/// xorshift64*: deterministic per writer, no dependency.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------------------------
// The contract, written out again from the README.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    InProgress,
    Succeeded,
    Failed,
}

pub fn trimmed(m: &StrMap, k: &str) -> Option<String> {
    m.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

pub fn phase(ext: &StrMap) -> Phase {
    match trimmed(ext, PHASE).map(|p| p.to_ascii_lowercase()).as_deref() {
        Some("succeeded" | "completed") => Phase::Succeeded,
        Some("failed" | "aborted") => Phase::Failed,
        _ => Phase::InProgress,
    }
}

pub fn first_chassis(options: &StrMap) -> Option<String> {
    options
        .get(RC)
        .and_then(|rc| rc.split(',').next())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// One port as its owner knows it: the acknowledged state (policy applied), and the source the
/// migration in progress started from (for migrations without a source tag).
#[derive(Debug, Clone, Default)]
pub struct PortModel {
    pub options: StrMap,
    /// The owner's keys only (tags and its marker); other writers' markers are kept apart.
    pub ext: StrMap,
    pub source_when_tagged: Option<String>,
    /// The last acknowledged writes (what was sent, the options expected after it), for the
    /// failure message.
    pub history: VecDeque<String>,
}

impl PortModel {
    pub fn migrating(&self) -> Option<String> {
        trimmed(&self.ext, DST)
    }

    pub fn source(&self) -> Option<String> {
        trimmed(&self.ext, SRC).or_else(|| self.source_when_tagged.clone())
    }

    /// Applies an acknowledged write: `write` changes the columns as the database does, then
    /// the contract sets the two keys from the state after the write.
    pub fn apply(&mut self, what: &Value, write: impl FnOnce(&mut StrMap, &mut StrMap)) {
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
        if self.history.len() == 16 {
            self.history.pop_front();
        }
        self.history.push_back(format!("{what} => options {:?}", self.options));
    }
}

// ---------------------------------------------------------------------------------------------
// OVSDB notation.

pub fn map_of(m: &StrMap) -> Value {
    json!(["map", m.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()])
}

pub fn parse_map(v: &Value) -> StrMap {
    v[1].as_array()
        .map(|pairs| {
            pairs
                .iter()
                .map(|p| (p[0].as_str().unwrap_or("").to_string(), p[1].as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn by_name(port: &str) -> Value {
    json!([["name", "==", port]])
}

/// How a writer's transactions reach the database.
pub trait Link {
    /// Sends `ops` as one transaction; whether it was committed (acknowledged, or found
    /// committed after the connection was lost).
    fn commit(&mut self, ops: Vec<Value>) -> bool;
}

/// One connection that must never fail: every transaction is acknowledged, or the test fails
/// (a write the server refused would make the bookkeeping wrong, and none of these should be
/// refused).
pub struct Direct {
    pub raw: Raw,
    pub id: u64,
}

impl Link for Direct {
    fn commit(&mut self, ops: Vec<Value>) -> bool {
        self.id += 1;
        let n = ops.len();
        let reply = super::transact_on(&mut self.raw, self.id, ops);
        assert!(reply["error"].is_null(), "transaction refused: {reply}");
        let results = reply["result"].as_array().expect("result array");
        assert_eq!(results.len(), n, "one result per op: {reply}");
        assert!(results.iter().all(|r| r.get("error").is_none()), "an op failed: {reply}");
        true
    }
}

// ---------------------------------------------------------------------------------------------
// The writers.

#[derive(Debug, Default)]
pub struct Tally {
    pub transactions: u64,
    pub started: u64,
    pub moved: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub aborted: u64,
    pub cleared: u64,
    pub unaware_updates: u64,
    pub unaware_mutates: u64,
    pub markers: u64,
}

pub struct Writer {
    pub w: usize,
    rng: Rng,
    pub ports: Vec<PortModel>,
    /// My marker on other writers' shared ports: (owner, index) → last acknowledged value.
    pub markers: HashMap<(usize, usize), String>,
    seq: u64,
    pub tally: Tally,
    /// Port name → uuid: ops address ports by `_uuid` (as the IDL and libovsdb do) when given,
    /// by `name` otherwise (which makes ovsdb-server scan the table).
    pub uuids: Option<std::sync::Arc<HashMap<String, String>>>,
}

impl Writer {
    pub fn new(w: usize, initial: Vec<PortModel>) -> Writer {
        Writer {
            w,
            rng: Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1)),
            ports: initial,
            markers: HashMap::new(),
            seq: 0,
            tally: Tally::default(),
            uuids: None,
        }
    }

    fn where_of(&self, port: &str) -> Value {
        match self.uuids.as_ref().and_then(|u| u.get(port)) {
            Some(uuid) => json!([["_uuid", "==", ["uuid", uuid]]]),
            None => by_name(port),
        }
    }

    pub fn run(&mut self, link: &mut dyn Link, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.seq += 1;
            match self.rng.below(100) {
                0..=39 => {
                    let j = self.rng.below(NEVER_TAGGED);
                    self.tag_step(link, j);
                }
                40..=59 => {
                    let j = self.rng.below(PORTS_PER_WRITER);
                    self.unaware_update(link, j);
                }
                60..=79 => {
                    let j = self.rng.below(PORTS_PER_WRITER);
                    self.unaware_mutate(link, j);
                }
                _ => self.marker(link),
            }
            self.tally.transactions += 1;
        }
    }

    /// Writes the owner's new tags on port `j` (whole map on private ports, mutate elsewhere)
    /// and records the result.
    fn write_tags(&mut self, link: &mut dyn Link, j: usize, tags: StrMap) {
        let port = port_name(self.w, j);
        let mut ext = self.ports[j].ext.clone();
        for t in TAGS {
            ext.remove(t);
        }
        ext.extend(tags.clone());
        let op = if j < PRIVATE {
            json!({"op": "update", "table": "Logical_Switch_Port", "where": self.where_of(&port),
                   "row": {"external_ids": map_of(&ext)}})
        } else {
            json!({"op": "mutate", "table": "Logical_Switch_Port", "where": self.where_of(&port),
                   "mutations": [["external_ids", "delete", ["set", TAGS]], ["external_ids", "insert", map_of(&tags)]]})
        };
        if link.commit(vec![op.clone()]) {
            self.ports[j].apply(&op, |_, e| *e = ext);
        }
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
    fn tag_step(&mut self, link: &mut dyn Link, j: usize) {
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
        self.write_tags(link, j, tags);
    }

    /// A writer that knows nothing of migration replaces the whole options map.
    fn unaware_update(&mut self, link: &mut dyn Link, j: usize) {
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
        let op = json!({"op": "update", "table": "Logical_Switch_Port", "where": self.where_of(&port),
                        "row": {"options": map_of(&options)}});
        if link.commit(vec![op.clone()]) {
            self.ports[j].apply(&op, |o, _| *o = options);
        }
        self.tally.unaware_updates += 1;
    }

    /// A writer that knows nothing of migration sets one key (delete + insert), sometimes a
    /// policy key.
    fn unaware_mutate(&mut self, link: &mut dyn Link, j: usize) {
        let port = port_name(self.w, j);
        let (key, value) = match self.rng.below(10) {
            0 => (RC.to_string(), hv(self.rng.below(CHASSIS))),
            1 => (AS.to_string(), "stale".to_string()),
            _ => ("own".to_string(), format!("m{}", self.seq)),
        };
        let op = json!({"op": "mutate", "table": "Logical_Switch_Port", "where": self.where_of(&port),
                        "mutations": [["options", "delete", ["set", [key]]],
                                      ["options", "insert", ["map", [[key, value]]]]]});
        if link.commit(vec![op.clone()]) {
            self.ports[j].apply(&op, |o, _| {
                o.insert(key, value);
            });
        }
        self.tally.unaware_mutates += 1;
    }

    /// My marker on another writer's shared port.
    fn marker(&mut self, link: &mut dyn Link) {
        let owner = (self.w + 1 + self.rng.below(WRITERS - 1)) % WRITERS;
        let j = PRIVATE + self.rng.below(PORTS_PER_WRITER - PRIVATE);
        let key = format!("g{:02}", self.w);
        let value = self.seq.to_string();
        let op = json!({"op": "mutate", "table": "Logical_Switch_Port", "where": self.where_of(&port_name(owner, j)),
                        "mutations": [["external_ids", "delete", ["set", [key]]],
                                      ["external_ids", "insert", ["map", [[key, value]]]]]});
        if link.commit(vec![op]) {
            self.markers.insert((owner, j), value);
        }
        self.tally.markers += 1;
    }
}

// ---------------------------------------------------------------------------------------------

/// The writers' ports, each pinned to a chassis, and the ops that insert them into `sw` (with
/// the switch itself when `create_switch`).
pub fn seed_writers(sw: &str, create_switch: bool) -> (Vec<Vec<PortModel>>, Vec<Value>) {
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
                "row": {"name": port_name(w, j), "options": map_of(&m.options), "external_ids": map_of(&m.ext)}}));
            refs.push(json!(["named-uuid", format!("p{w}_{j}")]));
            mine.push(m);
        }
        initial.push(mine);
    }
    if create_switch {
        ops.push(
            json!({"op": "insert", "table": "Logical_Switch", "row": {"name": sw, "ports": ["set", refs]}}),
        );
    } else {
        ops.push(json!({"op": "mutate", "table": "Logical_Switch", "where": [["name", "==", sw]],
            "mutations": [["ports", "insert", ["set", refs]]]}));
    }
    (initial, ops)
}

/// What every writer port must look like: its owner's model, plus the other writers' markers.
pub fn expected(writers: &[Writer]) -> HashMap<String, (StrMap, StrMap)> {
    let mut expected: HashMap<String, (StrMap, StrMap)> = HashMap::new();
    for wr in writers {
        for (j, m) in wr.ports.iter().enumerate() {
            expected.insert(port_name(wr.w, j), (m.options.clone(), m.ext.clone()));
        }
    }
    for wr in writers {
        for ((owner, j), value) in &wr.markers {
            let e = expected.get_mut(&port_name(*owner, *j)).expect("port");
            e.1.insert(format!("g{:02}", wr.w), value.clone());
        }
    }
    expected
}

/// The writers' tallies added up.
pub fn total(writers: &[Writer]) -> Tally {
    let mut total = Tally::default();
    for wr in writers {
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
    total
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} migrations started, {} moved, {} succeeded, {} failed, {} aborted, {} tag clears, \
             {} unaware option updates, {} unaware option mutates, {} markers on others' ports",
            self.started,
            self.moved,
            self.succeeded,
            self.failed,
            self.aborted,
            self.cleared,
            self.unaware_updates,
            self.unaware_mutates,
            self.markers
        )
    }
}

/// For each wrong port (5 at most): its owner's last acknowledged writes, and the proxy's last
/// lines about it.
pub fn explain(mismatches: &[String], writers: &[Writer], log: &str) -> String {
    let mut detail = String::new();
    for m in mismatches.iter().take(5) {
        detail.push_str(m);
        detail.push('\n');
        let port = m.split(':').next().unwrap_or_default();
        let (Some(owner), Some(j)) = (
            port.get(1..3).and_then(|o| o.parse::<usize>().ok()),
            port.get(4..).and_then(|j| j.parse::<usize>().ok()),
        ) else {
            continue;
        };
        if let Some(p) = writers.get(owner).and_then(|w| w.ports.get(j)) {
            detail.push_str("  owner's last acknowledged writes:\n");
            for h in &p.history {
                detail.push_str(&format!("    {h}\n"));
            }
        }
        detail.push_str("  proxy's last lines about it (and its starts):\n");
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains(&format!("port={port} "))
                    || l.contains("active reconciler")
                    || l.contains("upstream reachable")
            })
            .collect();
        for l in &lines[lines.len().saturating_sub(30)..] {
            detail.push_str(&format!("    {l}\n"));
        }
    }
    detail
}
