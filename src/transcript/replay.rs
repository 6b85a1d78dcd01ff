//! `replay`: plays a session transcript (see `record`) against a database and compares every
//! reply and notification the server sends with the recorded one.
//!
//! Sessions are replayed one after another, each on a connection of its own. The client's
//! messages are sent in order; before a message is sent, every reply and notification recorded
//! before it has arrived and been compared, so requests the client pipelined are pipelined
//! again and matched by id. The client's replies to the server's `echo` probes are not replayed; the
//! server's live probes are answered.
//!
//! Two databases never agree on row uuids, so comparison pairs them: a recorded uuid seen where
//! the live reply has another one (a `["uuid",…]` atom, a bare uuid string or a uuid object key)
//! is mapped to it, consistently (one to one) for the whole replay, and mapped uuids are substituted into the client's later messages. Unordered things
//! (`["set",…]`, `["map",…]`, `select` `rows`, and objects keyed by uuid such as a monitor's
//! `{"Table":{"<uuid>":row}}`) are paired by content, not position. Values that differ between
//! two databases by nature are not compared: see [`IGNORED_COLUMNS`] and [`blank_volatile`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::{json, Value};
use tokio_util::codec::Decoder;

use crate::net::remote::Active;
use crate::wire::FrameCodec;

/// How long a reply (or the barrier behind an awaited notification) may take.
const WAIT: Duration = Duration::from_secs(10);
/// Mismatches printed in full; the rest are counted.
const SHOWN_MISMATCHES: usize = 10;
/// Differences reported per mismatching message.
const DIFFS_PER_MISMATCH: usize = 5;
/// Longest rendering of a value or a request in the report, in characters.
const ABRIDGE: usize = 300;
/// Learning passes over one message before the final comparison (each pass can only add pairs).
const LEARNING_PASSES: usize = 8;

/// Columns never compared, as `(table, column)`; `"*"` is any table. Each differs between two
/// databases that went through the same transactions:
/// * `_version`: a fresh uuid per row version;
/// * `NB_Global` `*_cfg_timestamp`: wall-clock times written by northd and the controllers;
/// * `_Server` `Database` `index`: a cluster's Raft log index.
pub const IGNORED_COLUMNS: &[(&str, &str)] = &[
    ("*", "_version"),
    ("NB_Global", "nb_cfg_timestamp"),
    ("NB_Global", "sb_cfg_timestamp"),
    ("NB_Global", "hv_cfg_timestamp"),
    ("Database", "index"),
];

fn ignored(table: Option<&str>, column: &str) -> bool {
    IGNORED_COLUMNS.iter().any(|(t, c)| *c == column && (*t == "*" || Some(*t) == table))
}

/// Blanks (sets to null) the positions that differ per server by nature, in a reply to
/// `method` or in a notification named `method`:
/// * `get_server_id` result: the server's own uuid;
/// * `monitor_cond_since` result\[1\] and `update3` params\[1\]: the last transaction id.
pub fn blank_volatile(method: &str, msg: &mut Value) {
    let slot = match method {
        "get_server_id" => msg.get_mut("result"),
        "monitor_cond_since" => msg.get_mut("result").and_then(|r| r.get_mut(1)),
        "update3" => msg.get_mut("params").and_then(|p| p.get_mut(1)),
        _ => None,
    };
    if let Some(v) = slot {
        *v = Value::Null;
    }
}

/// Why a replay could not run. The cause, if any, is the error's `source`.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("transcript line {line}: {what}")]
    Transcript { line: usize, what: String },
    #[error("no upstream given")]
    NoUpstream,
    #[error("cannot connect to {remote}")]
    Connect { remote: String, source: std::io::Error },
    #[error("upstream I/O")]
    Io(#[from] std::io::Error),
    #[error("upstream framing")]
    Frame(#[from] crate::wire::FrameError),
    #[error("upstream sent a message that is not JSON")]
    Json(#[from] serde_json::Error),
    #[error("upstream closed the connection")]
    Closed,
}

// ---------------------------------------------------------------------------------------------
// Transcripts

/// A transcript: the sessions in the order they were opened.
#[derive(Debug, Default)]
pub struct Transcript {
    pub sessions: Vec<Session>,
}

#[derive(Debug, Default)]
pub struct Session {
    /// Transcript line of the `open` event (of the first message, in a transcript without one).
    pub line: usize,
    pub peer: String,
    pub steps: Vec<Step>,
    /// The recording hit its size cap: what came after is missing.
    pub truncated: bool,
}

#[derive(Debug)]
pub struct Step {
    /// 1-based transcript line.
    pub line: usize,
    pub kind: StepKind,
}

#[derive(Debug)]
pub enum StepKind {
    /// A client request or notification, sent as it went upstream (with uuids mapped).
    /// `trim`: `(client_ops, upstream_ops)` when the proxy had appended ops to it, so the reply
    /// the client got (the recorded one) was trimmed; the live reply is trimmed the same way
    /// before the two are compared.
    Send { raw: String, msg: Value, trim: Option<(usize, usize)> },
    /// The server's reply to the client's request with this id (canonical text).
    Reply { id: String, msg: Value },
    /// A notification from the server (`update`, `update2`, `update3`, `locked`, …).
    Notification { msg: Value },
}

/// Canonical text of an id: compact, object members sorted.
fn id_text(id: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k.as_str()]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(id).to_string()
}

fn nonnull_id(msg: &Value) -> Option<&Value> {
    msg.get("id").filter(|id| !id.is_null())
}

/// Parses a transcript written by `--record`; several sessions' files may be concatenated.
pub fn parse_transcript(text: &str) -> Result<Transcript, ReplayError> {
    let mut t = Transcript::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| ReplayError::Transcript { line: n, what };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        if let Some(event) = v.get("event").and_then(Value::as_str) {
            match event {
                "open" => t.sessions.push(Session {
                    line: n,
                    peer: v.get("peer").and_then(Value::as_str).unwrap_or_default().to_string(),
                    ..Session::default()
                }),
                "truncated" => current(&mut t, n).truncated = true,
                _ => {}
            }
            continue;
        }
        let dir = v.get("dir").and_then(Value::as_str).ok_or_else(|| bad("no \"dir\"".into()))?;
        let raw = match v.get("raw").and_then(Value::as_str) {
            Some(raw) => raw,
            None if v.get("raw_b64").is_some() => {
                return Err(bad("a message that is not UTF-8 (raw_b64) cannot be replayed".into()))
            }
            None => return Err(bad("no \"raw\"".into())),
        };
        let msg: Value =
            serde_json::from_str(raw).map_err(|e| bad(format!("recorded message is not JSON: {e}")))?;
        let has_method = msg.get("method").is_some();
        let kind = match (dir, has_method, nonnull_id(&msg)) {
            ("c2s", true, _) => {
                let ops = |m: &Value| {
                    m.get("params").and_then(Value::as_array).map_or(0, |p| p.len().saturating_sub(1))
                };
                let original = v
                    .get("original")
                    .and_then(Value::as_str)
                    .and_then(|o| serde_json::from_str::<Value>(o).ok());
                let trim = original
                    .filter(|o| o.get("method").and_then(Value::as_str) == Some("transact"))
                    .map(|o| (ops(&o), ops(&msg)))
                    .filter(|(client, upstream)| upstream > client);
                Some(StepKind::Send { raw: raw.to_string(), msg, trim })
            }
            // The client's reply to a server echo probe: the live server gets its own answers.
            ("c2s", false, _) => None,
            ("s2c", true, None) => Some(StepKind::Notification { msg }),
            // A server request (its echo probe): answered live, not expected.
            ("s2c", true, Some(_)) => None,
            ("s2c", false, Some(id)) => Some(StepKind::Reply { id: id_text(id), msg }),
            ("s2c", false, None) => None,
            (other, _, _) => return Err(bad(format!("unknown direction {other:?}"))),
        };
        if let Some(kind) = kind {
            current(&mut t, n).steps.push(Step { line: n, kind });
        }
    }
    Ok(t)
}

/// The session being read; a transcript without an `open` event gets one implicitly.
fn current(t: &mut Transcript, line: usize) -> &mut Session {
    if t.sessions.is_empty() {
        t.sessions.push(Session { line, ..Session::default() });
    }
    t.sessions.last_mut().expect("a session was just ensured")
}

// ---------------------------------------------------------------------------------------------
// Uuid pairing

/// `8-4-4-4-12` hex digits.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Recorded uuid ↔ live uuid, one to one. Learning is journaled so a tentative pairing can be
/// undone.
#[derive(Debug, Default)]
pub struct UuidMap {
    fwd: HashMap<String, String>,
    back: HashMap<String, String>,
    journal: Vec<String>,
}

impl UuidMap {
    pub fn len(&self) -> usize {
        self.fwd.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fwd.is_empty()
    }

    /// The live uuid paired with a recorded one.
    pub fn live(&self, recorded: &str) -> Option<&str> {
        self.fwd.get(recorded).map(String::as_str)
    }

    /// Pairs `recorded` with `live`, or says which earlier pairing contradicts it.
    pub fn pair(&mut self, recorded: &str, live: &str) -> Result<(), String> {
        match (self.fwd.get(recorded), self.back.get(live)) {
            (Some(l), _) if l == live => Ok(()),
            (Some(l), _) => Err(format!("recorded {recorded} was paired with {l} earlier")),
            (None, Some(r)) => Err(format!("live {live} was paired with recorded {r} earlier")),
            (None, None) => {
                self.fwd.insert(recorded.to_string(), live.to_string());
                self.back.insert(live.to_string(), recorded.to_string());
                self.journal.push(recorded.to_string());
                Ok(())
            }
        }
    }

    fn checkpoint(&self) -> usize {
        self.journal.len()
    }

    fn rollback(&mut self, checkpoint: usize) {
        while self.journal.len() > checkpoint {
            if let Some(r) = self.journal.pop() {
                if let Some(l) = self.fwd.remove(&r) {
                    self.back.remove(&l);
                }
            }
        }
    }

    /// A client message with every mapped uuid (atom or bare string) replaced by its live
    /// pair; `None` when nothing needed replacing.
    pub fn substitute(&self, msg: &Value) -> Option<Value> {
        fn walk(v: &mut Value, map: &UuidMap) -> bool {
            match v {
                Value::String(s) => match map.live(s) {
                    Some(l) if l != s => {
                        *s = l.to_string();
                        true
                    }
                    _ => false,
                },
                Value::Array(a) => a.iter_mut().fold(false, |acc, e| walk(e, map) | acc),
                Value::Object(m) => m.values_mut().fold(false, |acc, e| walk(e, map) | acc),
                _ => false,
            }
        }
        let mut out = msg.clone();
        walk(&mut out, self).then_some(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Normalised values

/// A message as compared: uuids recognised, unordered collections marked, ignored columns gone.
#[derive(Debug)]
enum Norm<'a> {
    Scalar(&'a Value),
    Uuid(&'a str, &'a Value),
    Obj(&'a Value, Vec<(&'a str, Norm<'a>)>),
    List(&'a Value, Vec<Norm<'a>>),
    /// Unordered elements, each with its path segment.
    Bag(&'a Value, Vec<(String, Norm<'a>)>),
    /// A member of an object keyed by uuid.
    Entry(&'a str, Box<Norm<'a>>),
}

fn uuid_keyed(v: &Value) -> bool {
    v.as_object().is_some_and(|m| !m.is_empty() && m.keys().all(|k| is_uuid(k)))
}

fn key_segment(k: &str) -> String {
    let plain = !is_uuid(k)
        && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        format!(".{k}")
    } else {
        format!("[{}]", Value::String(k.to_string()))
    }
}

/// `table` is the table whose rows may be below `v`; `key` the member name holding `v`.
fn normalise<'a>(v: &'a Value, table: Option<&'a str>, key: Option<&str>) -> Norm<'a> {
    match v {
        Value::String(s) if is_uuid(s) => Norm::Uuid(s, v),
        Value::Array(a) => {
            if let [Value::String(tag), Value::String(u)] = a.as_slice() {
                if tag == "uuid" && is_uuid(u) {
                    return Norm::Uuid(u, v);
                }
            }
            if let [Value::String(tag), Value::Array(items)] = a.as_slice() {
                if tag == "set" || tag == "map" {
                    let items = items
                        .iter()
                        .enumerate()
                        .map(|(i, e)| (format!("[1][{i}]"), normalise(e, table, None)))
                        .collect();
                    return Norm::Bag(v, items);
                }
            }
            if key == Some("rows") {
                let items = a
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (format!("[{i}]"), normalise(e, table, None)))
                    .collect();
                return Norm::Bag(v, items);
            }
            Norm::List(v, a.iter().map(|e| normalise(e, table, None)).collect())
        }
        Value::Object(m) if uuid_keyed(v) => Norm::Bag(
            v,
            m.iter()
                .map(|(k, row)| (key_segment(k), Norm::Entry(k, Box::new(normalise(row, table, None)))))
                .collect(),
        ),
        Value::Object(m) => Norm::Obj(
            v,
            m.iter()
                .filter(|(k, _)| !ignored(table, k))
                .map(|(k, child)| {
                    let t = if uuid_keyed(child) { Some(k.as_str()) } else { table };
                    (k.as_str(), normalise(child, t, Some(k)))
                })
                .collect(),
        ),
        _ => Norm::Scalar(v),
    }
}

/// A whole message; `op_tables[i]` is the table of a `transact` request's op `i`, the context
/// of `result[i]`.
fn normalise_message<'a>(msg: &'a Value, op_tables: &[Option<&'a str>]) -> Norm<'a> {
    match (msg.as_object(), op_tables.is_empty()) {
        (Some(m), false) => Norm::Obj(
            msg,
            m.iter()
                .map(|(k, child)| match (k.as_str(), child) {
                    ("result", Value::Array(results)) => (
                        "result",
                        Norm::List(
                            child,
                            results
                                .iter()
                                .enumerate()
                                .map(|(i, r)| normalise(r, op_tables.get(i).copied().flatten(), None))
                                .collect(),
                        ),
                    ),
                    _ => (k.as_str(), normalise(child, None, Some(k))),
                })
                .collect(),
        ),
        _ => normalise(msg, None, None),
    }
}

fn abridge(mut s: String) -> String {
    if s.chars().count() > ABRIDGE {
        s = s.chars().take(ABRIDGE).collect();
        s.push('…');
    }
    s
}

fn render(n: &Norm) -> String {
    abridge(match n {
        Norm::Scalar(v) | Norm::Uuid(_, v) | Norm::Obj(v, _) | Norm::List(v, _) | Norm::Bag(v, _) => {
            v.to_string()
        }
        Norm::Entry(k, row) => format!("{{{}:{}}}", Value::String(k.to_string()), render(row)),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Recorded,
    Live,
}

/// A canonical text of `n` for pairing unordered elements: members sorted, bags sorted, paired
/// uuids written as their live uuid, unpaired ones as `U?`.
fn signature(n: &Norm, side: Side, map: &UuidMap) -> String {
    let mut out = String::new();
    sig_into(n, side, map, &mut out);
    out
}

fn sig_uuid(u: &str, side: Side, map: &UuidMap, out: &mut String) {
    let paired = match side {
        Side::Recorded => map.live(u),
        Side::Live => map.back.contains_key(u).then_some(u),
    };
    match paired {
        Some(l) => {
            out.push_str("U:");
            out.push_str(l);
        }
        None => out.push_str("U?"),
    }
}

fn sig_into(n: &Norm, side: Side, map: &UuidMap, out: &mut String) {
    match n {
        Norm::Scalar(v) => out.push_str(&v.to_string()),
        Norm::Uuid(u, _) => sig_uuid(u, side, map, out),
        Norm::Obj(_, members) => {
            let mut sorted: Vec<&(&str, Norm)> = members.iter().collect();
            sorted.sort_by_key(|(k, _)| *k);
            out.push('{');
            for (k, v) in sorted {
                out.push_str(&Value::String(k.to_string()).to_string());
                out.push(':');
                sig_into(v, side, map, out);
                out.push(',');
            }
            out.push('}');
        }
        Norm::List(_, items) => {
            out.push('[');
            for v in items {
                sig_into(v, side, map, out);
                out.push(',');
            }
            out.push(']');
        }
        Norm::Bag(_, items) => {
            let mut sigs: Vec<String> = items.iter().map(|(_, v)| signature(v, side, map)).collect();
            sigs.sort();
            out.push('<');
            for s in sigs {
                out.push_str(&s);
                out.push(',');
            }
            out.push('>');
        }
        Norm::Entry(k, row) => {
            sig_uuid(k, side, map, out);
            out.push('=');
            sig_into(row, side, map, out);
        }
    }
}

fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// One difference between a recorded and a live message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// JSON path into the recorded message, e.g. `$.result[0].rows[1].name`.
    pub path: String,
    pub expected: String,
    pub got: String,
    /// What the path is in, when the path alone does not say (`op 3: select NB_Global`).
    pub context: Option<String>,
}

const ABSENT: &str = "(absent)";

/// One comparison walk. Learning passes (`record` false, `force` false) pair only what is
/// certain; the final pass also pairs ambiguous unordered elements in order and reports.
struct Cmp<'m> {
    map: &'m mut UuidMap,
    record: bool,
    force: bool,
    limit: usize,
    count: usize,
    diffs: Vec<Diff>,
}

impl<'m> Cmp<'m> {
    fn new(map: &'m mut UuidMap, record: bool, force: bool, limit: usize) -> Self {
        Cmp { map, record, force, limit, count: 0, diffs: Vec::new() }
    }

    fn full(&self) -> bool {
        self.count >= self.limit
    }

    fn diff(&mut self, path: &[String], expected: impl FnOnce() -> String, got: impl FnOnce() -> String) {
        self.count += 1;
        if self.record && self.diffs.len() < self.limit {
            let path = format!("${}", path.concat());
            self.diffs.push(Diff { path, expected: expected(), got: got(), context: None });
        }
    }

    fn cmp(&mut self, r: &Norm, l: &Norm, path: &mut Vec<String>) {
        if self.full() {
            return;
        }
        match (r, l) {
            (Norm::Uuid(a, _), Norm::Uuid(b, _)) => {
                if let Err(why) = self.map.pair(a, b) {
                    self.diff(path, || render(r), || format!("{} ({why})", render(l)));
                }
            }
            (Norm::Scalar(a), Norm::Scalar(b)) => {
                if !scalar_eq(a, b) {
                    self.diff(path, || render(r), || render(l));
                }
            }
            (Norm::Obj(_, rm), Norm::Obj(_, lm)) => {
                for (k, rv) in rm {
                    path.push(key_segment(k));
                    match lm.iter().find(|(lk, _)| lk == k) {
                        Some((_, lv)) => self.cmp(rv, lv, path),
                        None => self.diff(path, || render(rv), || ABSENT.into()),
                    }
                    path.pop();
                }
                for (k, lv) in lm {
                    if !rm.iter().any(|(rk, _)| rk == k) {
                        path.push(key_segment(k));
                        self.diff(path, || ABSENT.into(), || render(lv));
                        path.pop();
                    }
                }
            }
            (Norm::List(_, ra), Norm::List(_, la)) => {
                for i in 0..ra.len().max(la.len()) {
                    path.push(format!("[{i}]"));
                    match (ra.get(i), la.get(i)) {
                        (Some(rv), Some(lv)) => self.cmp(rv, lv, path),
                        (Some(rv), None) => self.diff(path, || render(rv), || ABSENT.into()),
                        (None, Some(lv)) => self.diff(path, || ABSENT.into(), || render(lv)),
                        (None, None) => {}
                    }
                    path.pop();
                }
            }
            (Norm::Bag(_, ra), Norm::Bag(_, la)) => self.bag(ra, la, path),
            (Norm::Entry(rk, rv), Norm::Entry(lk, lv)) => {
                if let Err(why) = self.map.pair(rk, lk) {
                    self.diff(path, || rk.to_string(), || format!("{lk} ({why})"));
                }
                self.cmp(rv, lv, path);
            }
            _ => self.diff(path, || render(r), || render(l)),
        }
    }

    /// Compares `r` with `l` tentatively: keeps what it learnt only if they are equal.
    fn try_pair(&mut self, r: &Norm, l: &Norm) -> bool {
        let checkpoint = self.map.checkpoint();
        let mut trial = Cmp::new(&mut *self.map, false, self.force, 1);
        trial.cmp(r, l, &mut Vec::new());
        let clean = trial.count == 0;
        if !clean {
            self.map.rollback(checkpoint);
        }
        clean
    }

    fn bag(&mut self, ra: &[(String, Norm)], la: &[(String, Norm)], path: &mut Vec<String>) {
        let mut rest_r: Vec<usize> = (0..ra.len()).collect();
        let mut rest_l: Vec<usize> = (0..la.len()).collect();
        loop {
            let rs: Vec<String> =
                rest_r.iter().map(|&i| signature(&ra[i].1, Side::Recorded, self.map)).collect();
            let ls: Vec<String> = rest_l.iter().map(|&i| signature(&la[i].1, Side::Live, self.map)).collect();
            let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
            for s in &rs {
                counts.entry(s).or_default().0 += 1;
            }
            for s in &ls {
                counts.entry(s).or_default().1 += 1;
            }
            let (mut taken_r, mut taken_l) = (Vec::new(), Vec::new());
            // Elements whose content is unique on both sides: certain pairs.
            for (rp, s) in rs.iter().enumerate() {
                if counts.get(s.as_str()) != Some(&(1, 1)) {
                    continue;
                }
                if let Some(lp) = ls.iter().position(|x| x == s) {
                    if self.try_pair(&ra[rest_r[rp]].1, &la[rest_l[lp]].1) {
                        taken_r.push(rp);
                        taken_l.push(lp);
                    }
                }
            }
            // Look-alikes: in the final pass, the first that compares equal.
            if taken_r.is_empty() && self.force {
                'found: for (rp, s) in rs.iter().enumerate() {
                    for (lp, x) in ls.iter().enumerate() {
                        if s == x && self.try_pair(&ra[rest_r[rp]].1, &la[rest_l[lp]].1) {
                            taken_r.push(rp);
                            taken_l.push(lp);
                            break 'found;
                        }
                    }
                }
            }
            if taken_r.is_empty() {
                break;
            }
            remove_positions(&mut rest_r, taken_r);
            remove_positions(&mut rest_l, taken_l);
        }
        if !self.force {
            return;
        }
        // What is left differs: pair the leftovers in signature order to show how.
        let by_sig = |rest: &[usize], items: &[(String, Norm)], side: Side, map: &UuidMap| {
            let mut v: Vec<(String, usize)> =
                rest.iter().map(|&i| (signature(&items[i].1, side, map), i)).collect();
            v.sort();
            v.into_iter().map(|(_, i)| i).collect::<Vec<_>>()
        };
        let rest_r = by_sig(&rest_r, ra, Side::Recorded, self.map);
        let rest_l = by_sig(&rest_l, la, Side::Live, self.map);
        for k in 0..rest_r.len().max(rest_l.len()) {
            match (rest_r.get(k), rest_l.get(k)) {
                (Some(&i), Some(&j)) => {
                    path.push(ra[i].0.clone());
                    let checkpoint = self.map.checkpoint();
                    self.cmp(&ra[i].1, &la[j].1, path);
                    self.map.rollback(checkpoint);
                    path.pop();
                }
                (Some(&i), None) => {
                    path.push(ra[i].0.clone());
                    self.diff(path, || render(&ra[i].1), || ABSENT.into());
                    path.pop();
                }
                (None, Some(&j)) => {
                    path.push(la[j].0.clone());
                    self.diff(path, || ABSENT.into(), || render(&la[j].1));
                    path.pop();
                }
                (None, None) => {}
            }
        }
    }
}

/// Removes the elements at `positions` (indices into `v`).
fn remove_positions(v: &mut Vec<usize>, mut positions: Vec<usize>) {
    positions.sort_unstable_by(|a, b| b.cmp(a));
    for p in positions {
        v.remove(p);
    }
}

/// Compares two normalised messages, learning uuid pairs; the differences, at most `limit`.
fn compare_norm(r: &Norm, l: &Norm, map: &mut UuidMap, limit: usize) -> Vec<Diff> {
    for _ in 0..LEARNING_PASSES {
        let before = map.len();
        Cmp::new(map, false, false, usize::MAX).cmp(r, l, &mut Vec::new());
        if map.len() == before {
            break;
        }
    }
    let mut last = Cmp::new(map, true, true, limit);
    last.cmp(r, l, &mut Vec::new());
    last.diffs
}

/// Compares a live reply with the recorded one for `request` (the request as sent), learning
/// uuid pairs into `map`.
pub fn compare_reply(request: &Value, recorded: &Value, live: &Value, map: &mut UuidMap) -> Vec<Diff> {
    let method = request.get("method").and_then(Value::as_str).unwrap_or_default();
    let (mut r, mut l) = (recorded.clone(), live.clone());
    blank_volatile(method, &mut r);
    blank_volatile(method, &mut l);
    let op_tables: Vec<Option<&str>> = match (method, request.get("params").and_then(Value::as_array)) {
        ("transact", Some(params)) => {
            params.iter().skip(1).map(|op| op.get("table").and_then(Value::as_str)).collect()
        }
        _ => Vec::new(),
    };
    let (rn, ln) = (normalise_message(&r, &op_tables), normalise_message(&l, &op_tables));
    let mut diffs = compare_norm(&rn, &ln, map, DIFFS_PER_MISMATCH);
    if method == "transact" {
        for d in &mut diffs {
            d.context = op_context(request, &d.path);
        }
    }
    diffs
}

/// `op I: OP TABLE` for a path into a `transact` reply's `result[I]`.
fn op_context(request: &Value, path: &str) -> Option<String> {
    let rest = path.strip_prefix("$.result[")?;
    let i: usize = rest[..rest.find(']')?].parse().ok()?;
    let op = request.get("params")?.get(i + 1)?;
    let name = op.get("op").and_then(Value::as_str).unwrap_or("?");
    Some(match op.get("table").and_then(Value::as_str) {
        Some(table) => format!("op {i}: {name} {table}"),
        None => format!("op {i}: {name}"),
    })
}

/// Compares a live server notification with the recorded one, learning uuid pairs.
pub fn compare_notification(recorded: &Value, live: &Value, map: &mut UuidMap) -> Vec<Diff> {
    let (mut r, mut l) = (recorded.clone(), live.clone());
    if let Some(method) = recorded.get("method").and_then(Value::as_str) {
        blank_volatile(method, &mut r);
        blank_volatile(method, &mut l);
    }
    compare_norm(&normalise_message(&r, &[]), &normalise_message(&l, &[]), map, DIFFS_PER_MISMATCH)
}

// ---------------------------------------------------------------------------------------------
// The live connection

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, d: Duration) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(Some(d)),
            Stream::Tcp(s) => s.set_read_timeout(Some(d)),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.write_all(buf),
            Stream::Tcp(s) => s.write_all(buf),
        }
    }
}

/// One connection to the database: what arrived, sorted into replies by id and notifications
/// in order. The server's echo probes are answered as they arrive.
struct Live {
    stream: Stream,
    codec: FrameCodec,
    buf: BytesMut,
    replies: HashMap<String, VecDeque<Value>>,
    notes: VecDeque<Value>,
    barriers: u64,
}

impl Live {
    fn connect(upstreams: &[Active]) -> Result<Live, ReplayError> {
        let mut last = ReplayError::NoUpstream;
        for remote in upstreams {
            let stream = match remote {
                Active::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
                Active::Tcp { host, port } => TcpStream::connect((host.as_str(), *port)).map(|s| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                }),
                // Replay speaks plain unix or TCP; point it at a plain listener of the database.
                Active::Ssl { .. } => Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "replay does not speak SSL: use a unix: or tcp: remote of the database",
                )),
            };
            match stream {
                Ok(stream) => {
                    return Ok(Live {
                        stream,
                        codec: FrameCodec::new(usize::MAX),
                        buf: BytesMut::new(),
                        replies: HashMap::new(),
                        notes: VecDeque::new(),
                        barriers: 0,
                    })
                }
                Err(source) => last = ReplayError::Connect { remote: remote.to_string(), source },
            }
        }
        Err(last)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ReplayError> {
        self.stream.write_all(bytes).map_err(|e| match e.kind() {
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => ReplayError::Closed,
            _ => ReplayError::Io(e),
        })
    }

    /// Reads once, waiting until `deadline` at most; false if nothing came in time.
    fn read_some(&mut self, deadline: Instant) -> Result<bool, ReplayError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        self.stream.set_read_timeout(left)?;
        let mut tmp = vec![0u8; 64 * 1024];
        let n = match self.stream.read(&mut tmp) {
            Ok(0) => return Err(ReplayError::Closed),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(true),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(ReplayError::Closed),
            Err(e) => return Err(e.into()),
        };
        self.buf.extend_from_slice(&tmp[..n]);
        while let Some(chunk) = self.codec.decode(&mut self.buf)? {
            let msg: Value = serde_json::from_slice(chunk.bytes())?;
            self.sort(msg)?;
        }
        Ok(true)
    }

    fn sort(&mut self, msg: Value) -> Result<(), ReplayError> {
        let method = msg.get("method").and_then(Value::as_str);
        match (method, nonnull_id(&msg)) {
            (Some("echo"), Some(id)) => {
                let params = msg.get("params").cloned().unwrap_or_else(|| json!([]));
                let answer = json!({"id": id, "result": params, "error": null});
                self.send(answer.to_string().as_bytes())?;
            }
            // OVSDB servers make no other requests; nothing to answer.
            (Some(_), Some(_)) => {}
            (Some(_), None) => self.notes.push_back(msg),
            (None, Some(id)) => {
                let key = id_text(id);
                self.replies.entry(key).or_default().push_back(msg);
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// The reply to the request with canonical id `id`; `None` if it did not come in time.
    fn reply(&mut self, id: &str) -> Result<Option<Value>, ReplayError> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = self.replies.get_mut(id).and_then(VecDeque::pop_front) {
                return Ok(Some(v));
            }
            if !self.read_some(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Sends an `echo` and waits for its reply: the server has then sent everything that the
    /// requests before it caused (it flushes monitor updates before reading the next request).
    fn barrier(&mut self) -> Result<bool, ReplayError> {
        self.barriers += 1;
        let id = json!(["ovn-nb-proxy-replay", self.barriers]);
        self.send(json!({"id": id, "method": "echo", "params": []}).to_string().as_bytes())?;
        Ok(self.reply(&id_text(&id))?.is_some())
    }

    /// The next notification; `None` if the server sent none before a barrier.
    fn notification(&mut self) -> Result<Option<Value>, ReplayError> {
        if self.notes.is_empty() {
            self.barrier()?;
        }
        Ok(self.notes.pop_front())
    }
}

// ---------------------------------------------------------------------------------------------
// Replaying

/// A recorded message the live server did not reproduce.
#[derive(Debug)]
pub struct Mismatch {
    /// 1-based session number in the transcript.
    pub session: usize,
    /// Transcript line of the recorded message.
    pub line: usize,
    /// What was compared, e.g. `reply to transact (id 4)`.
    pub what: String,
    /// The request as sent, abridged.
    pub request: Option<String>,
    pub diffs: Vec<Diff>,
}

/// The outcome of a replay.
#[derive(Debug, Default)]
pub struct Report {
    pub file: String,
    pub upstream: String,
    pub sessions: usize,
    pub requests: usize,
    pub replies: usize,
    pub notifications: usize,
    pub mismatches: Vec<Mismatch>,
    /// Things worth knowing that are not mismatches (a truncated recording).
    pub notes: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replay of {} against {}: {} session(s), {} request(s) sent, {} reply(ies) and {} notification(s) compared: ",
            self.file, self.upstream, self.sessions, self.requests, self.replies, self.notifications
        )?;
        if self.passed() {
            writeln!(f, "all equal")?;
        } else {
            writeln!(f, "{} mismatch(es)", self.mismatches.len())?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for (i, m) in self.mismatches.iter().take(SHOWN_MISMATCHES).enumerate() {
            writeln!(
                f,
                "\nmismatch {}: session {}, transcript line {}: {}",
                i + 1,
                m.session,
                m.line,
                m.what
            )?;
            if let Some(r) = &m.request {
                writeln!(f, "  request: {r}")?;
            }
            for d in &m.diffs {
                match &d.context {
                    Some(c) => writeln!(f, "  at {} ({c})", d.path)?,
                    None => writeln!(f, "  at {}", d.path)?,
                }
                writeln!(f, "    expected: {}", d.expected)?;
                writeln!(f, "    got:      {}", d.got)?;
            }
        }
        if self.mismatches.len() > SHOWN_MISMATCHES {
            writeln!(f, "\n… and {} more mismatch(es)", self.mismatches.len() - SHOWN_MISMATCHES)?;
        }
        Ok(())
    }
}

/// Replays the transcript in `file` against the first reachable of `upstreams`.
pub fn run(file: &Path, upstreams: &[Active]) -> Result<Report, ReplayError> {
    let text = std::fs::read_to_string(file)
        .map_err(|source| ReplayError::Read { path: file.to_path_buf(), source })?;
    let transcript = parse_transcript(&text)?;
    let mut report = replay(&transcript, upstreams)?;
    report.file = file.display().to_string();
    Ok(report)
}

/// Replays every session of `t`, in order, sharing one uuid pairing.
pub fn replay(t: &Transcript, upstreams: &[Active]) -> Result<Report, ReplayError> {
    let mut report = Report {
        upstream: upstreams.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        sessions: t.sessions.len(),
        ..Report::default()
    };
    let mut map = UuidMap::default();
    for (i, s) in t.sessions.iter().enumerate() {
        replay_session(i + 1, s, upstreams, &mut map, &mut report)?;
    }
    Ok(report)
}

fn describe(msg: &Value) -> String {
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("?");
    match nonnull_id(msg) {
        Some(id) => format!("{method} (id {id})"),
        None => method.to_string(),
    }
}

/// `(client_ops, upstream_ops)` of a request the proxy had appended ops to.
type Trim = Option<(usize, usize)>;

fn replay_session(
    number: usize,
    s: &Session,
    upstreams: &[Active],
    map: &mut UuidMap,
    report: &mut Report,
) -> Result<(), ReplayError> {
    let mut live = Live::connect(upstreams)?;
    // Requests as sent, by id, awaiting comparison of their replies.
    let mut sent: HashMap<String, VecDeque<(Value, Trim)>> = HashMap::new();
    let mismatch = |line: usize, what: String, request: Option<&Value>, diffs: Vec<Diff>| Mismatch {
        session: number,
        line,
        what,
        request: request.map(|r| abridge(r.to_string())),
        diffs,
    };
    for step in &s.steps {
        let outcome = match &step.kind {
            StepKind::Send { raw, msg, trim } => {
                let mapped = map.substitute(msg);
                match &mapped {
                    Some(m) => live.send(m.to_string().as_bytes()),
                    None => live.send(raw.as_bytes()),
                }
                .map(|()| {
                    if let Some(id) = nonnull_id(msg) {
                        report.requests += 1;
                        let msg = mapped.unwrap_or_else(|| msg.clone());
                        sent.entry(id_text(id)).or_default().push_back((msg, *trim));
                    }
                })
            }
            StepKind::Reply { id, msg } => {
                let Some((request, trim)) = sent.get_mut(id).and_then(VecDeque::pop_front) else {
                    continue; // a reply to nothing this replay sent
                };
                match live.reply(id) {
                    Ok(Some(mut got)) => {
                        // Like with like: the client got the reply trimmed to its own ops.
                        if let (Some((client_ops, upstream_ops)), Some(result)) =
                            (trim, got.get_mut("result"))
                        {
                            *result = crate::policy::map_result(result, client_ops, upstream_ops);
                        }
                        report.replies += 1;
                        let diffs = compare_reply(&request, msg, &got, map);
                        if !diffs.is_empty() {
                            let what = format!("reply to {}", describe(&request));
                            report.mismatches.push(mismatch(step.line, what, Some(&request), diffs));
                        }
                        Ok(())
                    }
                    Ok(None) => {
                        let what = format!("no reply to {} within {} s", describe(&request), WAIT.as_secs());
                        report.mismatches.push(mismatch(step.line, what, Some(&request), Vec::new()));
                        break; // the session cannot go on in step with the recording
                    }
                    Err(e) => Err(e),
                }
            }
            StepKind::Notification { msg } => match live.notification() {
                Ok(Some(got)) => {
                    report.notifications += 1;
                    let diffs = compare_notification(msg, &got, map);
                    if !diffs.is_empty() {
                        let what = format!("notification {}", describe(msg));
                        report.mismatches.push(mismatch(step.line, what, None, diffs));
                    }
                    Ok(())
                }
                Ok(None) => {
                    let what = format!("notification {} not sent by the server", describe(msg));
                    let diff = Diff {
                        path: "$".into(),
                        expected: abridge(msg.to_string()),
                        got: ABSENT.into(),
                        context: None,
                    };
                    report.mismatches.push(mismatch(step.line, what, None, vec![diff]));
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(()) => {}
            Err(ReplayError::Closed) => {
                let what = "the server closed the connection".to_string();
                report.mismatches.push(mismatch(step.line, what, None, Vec::new()));
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    if s.truncated {
        report.notes.push(format!("session {number} was truncated when recorded: its end was not replayed"));
    }
    // Let the server finish what this session asked before the next session starts.
    match live.barrier() {
        Ok(_) | Err(ReplayError::Closed) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "11111111-1111-1111-1111-111111111111";
    const U2: &str = "22222222-2222-2222-2222-222222222222";
    const U3: &str = "33333333-3333-3333-3333-333333333333";
    const A: &str = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa";
    const B: &str = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb";
    const C: &str = "cccccccc-cccc-cccc-cccc-cccccccccccc";

    /// `{1}` `{2}` `{3}` stand for recorded uuids, `{a}` `{b}` `{c}` for live ones.
    fn j(text: &str) -> Value {
        let text = text
            .replace("{1}", U1)
            .replace("{2}", U2)
            .replace("{3}", U3)
            .replace("{a}", A)
            .replace("{b}", B)
            .replace("{c}", C);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad test JSON {text}: {e}"))
    }

    fn paths(diffs: &[Diff]) -> Vec<&str> {
        diffs.iter().map(|d| d.path.as_str()).collect()
    }

    #[test]
    fn uuid_shape() {
        for (s, ok) in [
            (U1, true),
            ("436753b6-0f96-43c4-97f8-66079454ccac", true),
            ("436753b6-0f96-43c4-97f8-66079454ccaX", false),
            ("436753b6_0f96_43c4_97f8_66079454ccac", false),
            ("436753b6-0f96-43c4-97f8-66079454cca", false),
            ("", false),
        ] {
            assert_eq!(is_uuid(s), ok, "{s}");
        }
    }

    /// (request, recorded reply, live reply, paths of the differences, pairs learnt)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);

    #[test]
    fn replies_table() {
        let transact = r#"{"id":4,"method":"transact","params":["OVN_Northbound",
            {"op":"select","table":"Logical_Switch","where":[]}]}"#;
        let monitor = r#"{"id":3,"method":"monitor_cond","params":["OVN_Northbound",null,{}]}"#;
        let cases: &[Case] = &[
            // Uuid atoms pair up.
            (
                transact,
                r#"{"id":4,"result":[{"uuid":["uuid","{1}"]}],"error":null}"#,
                r#"{"id":4,"result":[{"uuid":["uuid","{a}"]}],"error":null}"#,
                &[],
                &[(U1, A)],
            ),
            // A plain value differs.
            (
                transact,
                r#"{"id":4,"result":[{"count":1}],"error":null}"#,
                r#"{"id":4,"result":[{"count":2}],"error":null}"#,
                &["$.result[0].count"],
                &[],
            ),
            // Rows keyed by uuid, in another order, are paired by content.
            (
                monitor,
                r#"{"id":3,"result":{"Logical_Switch":{
                    "{1}":{"initial":{"name":"sw0","ports":["set",[["uuid","{2}"],["uuid","{3}"]]]}},
                    "{2}":{"initial":{"name":"p1"}}}},"error":null}"#,
                r#"{"id":3,"result":{"Logical_Switch":{
                    "{b}":{"initial":{"name":"p1"}},
                    "{a}":{"initial":{"name":"sw0","ports":["set",[["uuid","{c}"],["uuid","{b}"]]]}}}},"error":null}"#,
                &[],
                &[(U1, A), (U2, B), (U3, C)],
            ),
            // A set's members are told apart by the rows they name, learnt elsewhere in the reply.
            (
                monitor,
                r#"{"id":3,"result":{
                    "Logical_Switch":{"{1}":{"initial":{"name":"sw0","ports":["set",[["uuid","{2}"],["uuid","{3}"]]]}}},
                    "Logical_Switch_Port":{"{2}":{"initial":{"name":"p1"}},"{3}":{"initial":{"name":"p2"}}}},"error":null}"#,
                r#"{"id":3,"result":{
                    "Logical_Switch":{"{a}":{"initial":{"name":"sw0","ports":["set",[["uuid","{b}"],["uuid","{c}"]]]}}},
                    "Logical_Switch_Port":{"{c}":{"initial":{"name":"p1"}},"{b}":{"initial":{"name":"p2"}}}},"error":null}"#,
                &[],
                &[(U1, A), (U2, C), (U3, B)],
            ),
            // An extra live row is reported where it is.
            (
                monitor,
                r#"{"id":3,"result":{"Logical_Switch":{"{1}":{"initial":{"name":"sw0"}}}},"error":null}"#,
                r#"{"id":3,"result":{"Logical_Switch":{"{b}":{"initial":{"name":"extra"}},"{a}":{"initial":{"name":"sw0"}}}},"error":null}"#,
                &[&format!("$.result.Logical_Switch[\"{B}\"]")],
                &[(U1, A)],
            ),
            // Select rows in another order; `_version` is not compared.
            (
                transact,
                r#"{"id":4,"result":[{"rows":[{"_uuid":["uuid","{1}"],"_version":["uuid","{3}"],"name":"a"},
                    {"_uuid":["uuid","{2}"],"_version":["uuid","{3}"],"name":"b"}]}],"error":null}"#,
                r#"{"id":4,"result":[{"rows":[{"_uuid":["uuid","{b}"],"_version":["uuid","{c}"],"name":"b"},
                    {"_uuid":["uuid","{a}"],"_version":["uuid","{a}"],"name":"a"}]}],"error":null}"#,
                &[],
                &[(U1, A), (U2, B)],
            ),
            // Maps are unordered.
            (
                transact,
                r#"{"id":4,"result":[{"rows":[{"options":["map",[["k1","v1"],["k2","v2"]]]}]}],"error":null}"#,
                r#"{"id":4,"result":[{"rows":[{"options":["map",[["k2","v2"],["k1","v1"]]]}]}],"error":null}"#,
                &[],
                &[],
            ),
            // A changed map value shows the pair.
            (
                transact,
                r#"{"id":4,"result":[{"rows":[{"options":["map",[["k1","v1"]]]}]}],"error":null}"#,
                r#"{"id":4,"result":[{"rows":[{"options":["map",[["k1","v9"]]]}]}],"error":null}"#,
                &["$.result[0].rows[0].options[1][0][1]"],
                &[],
            ),
            // The server's id and the last transaction id are not compared.
            (
                r#"{"id":1,"method":"get_server_id","params":[]}"#,
                r#"{"id":1,"result":"{1}","error":null}"#,
                r#"{"id":1,"result":"{a}","error":null}"#,
                &[],
                &[],
            ),
            (
                r#"{"id":2,"method":"monitor_cond_since","params":[]}"#,
                r#"{"id":2,"result":[false,"{2}",{}],"error":null}"#,
                r#"{"id":2,"result":[false,"{b}",{}],"error":null}"#,
                &[],
                &[],
            ),
        ];
        for (req, rec, live, want, pairs) in cases {
            let mut map = UuidMap::default();
            let diffs = compare_reply(&j(req), &j(rec), &j(live), &mut map);
            assert_eq!(paths(&diffs), *want, "{rec}\n{live}\n{diffs:#?}");
            for (r, l) in *pairs {
                assert_eq!(map.live(r), Some(*l), "{rec}: pair of {r}");
            }
            if want.is_empty() {
                assert_eq!(map.len(), pairs.len(), "{rec}: nothing else learnt");
            }
        }
    }

    #[test]
    fn ignored_columns_by_table() {
        let req = j(
            r#"{"id":1,"method":"transact","params":["OVN_Northbound",{"op":"select","table":"NB_Global","where":[]}]}"#,
        );
        let rec = j(r#"{"id":1,"result":[{"rows":[{"nb_cfg":0,"nb_cfg_timestamp":5}]}],"error":null}"#);
        let live = j(r#"{"id":1,"result":[{"rows":[{"nb_cfg":0,"nb_cfg_timestamp":7}]}],"error":null}"#);
        assert!(compare_reply(&req, &rec, &live, &mut UuidMap::default()).is_empty());
        // The same column name in another table is compared.
        let req = j(
            r#"{"id":1,"method":"transact","params":["OVN_Northbound",{"op":"select","table":"Other","where":[]}]}"#,
        );
        assert_eq!(compare_reply(&req, &rec, &live, &mut UuidMap::default()).len(), 1);
        // In monitor updates the table comes from the update itself.
        let rec = j(
            r#"{"id":null,"method":"update3","params":[null,"{1}",{"NB_Global":{"{2}":{"modify":{"hv_cfg_timestamp":1}}}}]}"#,
        );
        let live = j(
            r#"{"id":null,"method":"update3","params":[null,"{a}",{"NB_Global":{"{b}":{"modify":{"hv_cfg_timestamp":2}}}}]}"#,
        );
        let mut map = UuidMap::default();
        assert!(compare_notification(&rec, &live, &mut map).is_empty());
        assert_eq!(map.live(U2), Some(B));
        assert_eq!(map.live(U1), None, "the last txn id is not paired");
    }

    #[test]
    fn a_uuid_pairs_one_to_one() {
        let req =
            j(r#"{"id":4,"method":"transact","params":["OVN_Northbound",{"op":"insert"},{"op":"insert"}]}"#);
        let mut map = UuidMap::default();
        let rec = j(r#"{"id":4,"result":[{"uuid":["uuid","{1}"]},{"uuid":["uuid","{2}"]}],"error":null}"#);
        let live = j(r#"{"id":4,"result":[{"uuid":["uuid","{a}"]},{"uuid":["uuid","{a}"]}],"error":null}"#);
        let diffs = compare_reply(&req, &rec, &live, &mut map);
        assert_eq!(paths(&diffs), ["$.result[1].uuid"]);
        assert!(diffs[0].got.contains("paired with recorded"), "{diffs:?}");
        // Pairs persist from one message to the next.
        let rec = j(r#"{"id":5,"result":[{"uuid":["uuid","{1}"]}],"error":null}"#);
        let live = j(r#"{"id":5,"result":[{"uuid":["uuid","{b}"]}],"error":null}"#);
        assert_eq!(paths(&compare_reply(&req, &rec, &live, &mut map)), ["$.result[0].uuid"]);
    }

    #[test]
    fn mapped_uuids_are_substituted_into_client_messages() {
        let mut map = UuidMap::default();
        map.pair(U1, A).expect("fresh");
        let msg = j(r#"{"id":5,"method":"transact","params":["OVN_Northbound",
            {"op":"mutate","table":"Logical_Switch","where":[["_uuid","==",["uuid","{1}"]]],
             "mutations":[["ports","insert",["set",[["named-uuid","row1"]]]]]}]}"#);
        let out = map.substitute(&msg).expect("changed");
        assert_eq!(out["params"][1]["where"][0][2], j(r#"["uuid","{a}"]"#));
        assert!(map.substitute(&j(r#"{"id":1,"method":"list_dbs","params":[]}"#)).is_none());
        map.rollback(0);
        assert!(map.is_empty());
    }

    #[test]
    fn transcript_parsing() {
        let text = [
            r#"{"t":1,"event":"open","session":1,"peer":"unix:p"}"#,
            r#"{"t":1,"dir":"c2s","raw":"{\"id\":1,\"method\":\"list_dbs\",\"params\":[]}"}"#,
            r#"{"t":1,"dir":"s2c","raw":"{\"id\":\"echo\",\"method\":\"echo\",\"params\":[]}"}"#,
            r#"{"t":1,"dir":"c2s","raw":"{\"id\":\"echo\",\"result\":[],\"error\":null}"}"#,
            r#"{"t":1,"dir":"s2c","raw":"{\"id\":null,\"method\":\"update3\",\"params\":[]}"}"#,
            r#"{"t":1,"dir":"s2c","raw":"{\"id\":1,\"result\":[\"OVN_Northbound\"],\"error\":null}"}"#,
            "",
            r#"{"t":2,"event":"open","session":2,"peer":"unix:p"}"#,
            r#"{"t":2,"dir":"c2s","raw":"{\"id\":{\"b\":1,\"a\":2},\"method\":\"echo\",\"params\":[]}"}"#,
            r#"{"t":2,"event":"truncated"}"#,
        ]
        .join("\n");
        let t = parse_transcript(&text).expect("parses");
        assert_eq!(t.sessions.len(), 2);
        let kinds: Vec<String> = t.sessions[0]
            .steps
            .iter()
            .map(|s| match &s.kind {
                StepKind::Send { .. } => format!("send@{}", s.line),
                StepKind::Reply { id, .. } => format!("reply {id}@{}", s.line),
                StepKind::Notification { .. } => format!("note@{}", s.line),
            })
            .collect();
        assert_eq!(kinds, ["send@2", "note@5", "reply 1@6"]);
        assert!(t.sessions[1].truncated);
        assert_eq!(t.sessions[1].line, 8);
        let StepKind::Send { msg, .. } = &t.sessions[1].steps[0].kind else { panic!("a send") };
        assert_eq!(id_text(&msg["id"]), r#"{"a":2,"b":1}"#);

        for (bad, why) in [
            ("nope", "not JSON"),
            (r#"{"dir":"c2s","raw_b64":"AA=="}"#, "raw_b64"),
            (r#"{"dir":"up","raw":"{}"}"#, "unknown direction"),
            (r#"{"dir":"c2s","raw":"{"}"#, "recorded message is not JSON"),
        ] {
            let e = parse_transcript(bad).expect_err(bad).to_string();
            assert!(e.contains("line 1") && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn report_is_bounded_and_readable() {
        let mut r = Report { file: "f".into(), upstream: "unix:s".into(), ..Report::default() };
        assert!(r.to_string().contains("all equal"));
        for i in 0..SHOWN_MISMATCHES + 3 {
            r.mismatches.push(Mismatch {
                session: 1,
                line: i,
                what: "reply to transact (id 4)".into(),
                request: Some("{}".into()),
                diffs: vec![Diff {
                    path: "$.result[0].count".into(),
                    expected: "1".into(),
                    got: "2".into(),
                    context: Some("op 0: mutate Logical_Switch".into()),
                }],
            });
        }
        let text = r.to_string();
        assert!(text.contains("13 mismatch(es)") && text.contains("and 3 more"), "{text}");
        let at = "at $.result[0].count (op 0: mutate Logical_Switch)\n    expected: 1\n    got:      2";
        assert!(text.contains(at), "{text}");
        assert_eq!(abridge("x".repeat(ABRIDGE + 10)).chars().count(), ABRIDGE + 1);
    }
}
