//! The policy on arbitrary transactions shaped like OVSDB `transact` params: insert, update,
//! mutate, delete, select, wait and the no-op ops on Logical_Switch_Port (and other tables),
//! with `where` clauses by name, uuid, named-uuid and map columns, and the migration tags and
//! option keys in every spelling, mixed with arbitrary JSON where any value goes.
//!
//! Checked: `plan_transact` never panics; a rewrite keeps the client's ops in place (same `op`,
//! `table`, `where`), only appends `mutate`s on ports, and counts its ops right; re-planning the
//! rewritten params against the same view changes nothing more; `Trim::apply` never panics and
//! keeps the client's results; the wire glue (`inspect_request`, `rewritten`, `fix_reply`) agrees
//! with the plan and keeps the envelope (it plans from each op's text, reading only the ops that
//! can matter: the same plan, unless an op the policy cannot read is one it did not need to
//! read, which the server judges); and the fast path (`must_plan`) agrees with the full
//! plan: against a view where nothing migrates, a message it lets pass unparsed is one the
//! policy forwards untouched, without a change or a skip, whatever escapes spell its keys.
#![no_main]

use std::collections::BTreeMap;

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ovn_nb_proxy::policy::{plan_transact, LspState, PolicyConfig, StaticView, Trim};
use ovn_nb_proxy::proxy::rewrite::{fix_reply, inspect_request, may_touch_ports, must_plan, PendingMap};
use serde_json::{json, Map, Value};

const UUIDS: [&str; 5] = [
    "11111111-1111-1111-1111-111111111111",
    "22222222-2222-2222-2222-222222222222",
    "33333333-3333-3333-3333-333333333333",
    "44444444-4444-4444-4444-444444444444",
    "55555555-5555-5555-5555-555555555555",
];

/// Port `vm{i+1}` (uuid `UUIDS[i]`) with these options and external_ids.
fn row(i: usize, opts: &[(&str, &str)], ext: &[(&str, &str)]) -> LspState {
    LspState {
        uuid: UUIDS[i].into(),
        name: format!("vm{}", i + 1),
        options: opts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        external_ids: ext.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// vm1 untagged on hv1; vm2 migrating hv1 → hv2 with the proxy's options; vm3 succeeded on hv2;
/// vm4 tagged without any source; vm5 failed back to hv3, source tagged.
fn view() -> StaticView {
    StaticView::new(vec![
        row(0, &[("requested-chassis", "hv1"), ("x", "1")], &[("owner", "cms")]),
        row(
            1,
            &[("requested-chassis", "hv1,hv2"), ("activation-strategy", "rarp")],
            &[("migration-destination", "hv2")],
        ),
        row(
            2,
            &[("requested-chassis", "hv2")],
            &[("migration-destination", "hv2"), ("migration-phase", "succeeded")],
        ),
        row(3, &[], &[("migration-destination", "hv3")]),
        row(
            4,
            &[("requested-chassis", "hv3")],
            &[("migration-destination", "hv4"), ("migration-source", "hv3"), ("migration-phase", "Failed")],
        ),
    ])
}

/// The same ports with no migration anywhere (tags removed, options as the proxy left them):
/// what the fast path sees when nothing migrates.
fn quiet_view() -> StaticView {
    StaticView::new(vec![
        row(0, &[("requested-chassis", "hv1"), ("x", "1")], &[("owner", "cms")]),
        row(1, &[("requested-chassis", "hv1,hv2"), ("activation-strategy", "rarp")], &[]),
        row(2, &[("requested-chassis", "hv2")], &[("migration-phase", "succeeded")]),
        row(3, &[], &[("migration-source", "hv3")]),
        row(4, &[("requested-chassis", "hv3")], &[("migration-destination-x", "hv4")]),
    ])
}

/// Ways a key may be spelt on the wire that `serde_json` does not write itself.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Spelling {
    Plain,
    /// One letter of the destination key as a `\u` escape.
    Unicode(u8),
    /// `\/` for every `/`, and one letter escaped.
    Solidus(u8),
}

/// `text` with every `"migration-destination"` respelt.
fn respell(text: &str, spelling: Spelling) -> String {
    let key = "migration-destination";
    let escaped = |at: u8| {
        let i = at as usize % key.len();
        let c = key.as_bytes()[i];
        format!("{}\\u{:04x}{}", &key[..i], c, &key[i + 1..])
    };
    match spelling {
        Spelling::Plain => text.to_string(),
        Spelling::Unicode(at) => text.replace(key, &escaped(at)),
        Spelling::Solidus(at) => text.replace('/', "\\/").replace(key, &escaped(at)),
    }
}

/// Any JSON, small.
#[derive(Arbitrary, Debug)]
enum J {
    Null,
    Bool(bool),
    Num(i16),
    Str(String),
    Word(Word),
    Arr(Vec<J>),
    Obj(Vec<(Word, J)>),
}

impl J {
    fn to_json(&self) -> Value {
        match self {
            J::Null => Value::Null,
            J::Bool(b) => json!(b),
            J::Num(n) => json!(n),
            J::Str(s) => json!(s),
            J::Word(w) => json!(w.text()),
            J::Arr(v) => Value::Array(v.iter().map(J::to_json).collect()),
            J::Obj(v) => Value::Object(v.iter().map(|(k, v)| (k.text().to_string(), v.to_json())).collect()),
        }
    }
}

/// The words that matter to the policy, so that arbitrary JSON hits its paths.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Word {
    Map,
    Set,
    Uuid,
    NamedUuid,
    Options,
    ExternalIds,
    Name,
    UuidCol,
    Op,
    Table,
    Where,
    Row,
    Mutations,
    Lsp,
    Insert,
    Delete,
    Eq,
}

impl Word {
    fn text(self) -> &'static str {
        match self {
            Word::Map => "map",
            Word::Set => "set",
            Word::Uuid => "uuid",
            Word::NamedUuid => "named-uuid",
            Word::Options => "options",
            Word::ExternalIds => "external_ids",
            Word::Name => "name",
            Word::UuidCol => "_uuid",
            Word::Op => "op",
            Word::Table => "table",
            Word::Where => "where",
            Word::Row => "row",
            Word::Mutations => "mutations",
            Word::Lsp => "Logical_Switch_Port",
            Word::Insert => "insert",
            Word::Delete => "delete",
            Word::Eq => "==",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Key {
    Rc,
    As,
    Dst,
    Src,
    Phase,
    Strat,
    X,
    Owner,
    Other(String),
}

impl Key {
    fn text(&self) -> String {
        match self {
            Key::Rc => "requested-chassis".into(),
            Key::As => "activation-strategy".into(),
            Key::Dst => "migration-destination".into(),
            Key::Src => "migration-source".into(),
            Key::Phase => "migration-phase".into(),
            Key::Strat => "migration-activation-strategy".into(),
            Key::X => "x".into(),
            Key::Owner => "owner".into(),
            Key::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Val {
    Hv(u8),
    Pair(u8, u8),
    Padded(u8),
    Empty,
    Succeeded,
    Completed,
    Failed,
    Aborted,
    Running,
    NoneWord,
    Rarp,
    Comma,
    Other(String),
}

impl Val {
    fn text(&self) -> String {
        let hv = |n: &u8| format!("hv{}", n % 5);
        match self {
            Val::Hv(n) => hv(n),
            Val::Pair(a, b) => format!("{},{}", hv(a), hv(b)),
            Val::Padded(n) => format!("  {} ", hv(n)),
            Val::Empty => String::new(),
            Val::Succeeded => "Succeeded".into(),
            Val::Completed => "completed".into(),
            Val::Failed => "failed".into(),
            Val::Aborted => " ABORTED".into(),
            Val::Running => "Running".into(),
            Val::NoneWord => "none".into(),
            Val::Rarp => "rarp".into(),
            Val::Comma => "hv1,hv9".into(),
            Val::Other(s) => s.clone(),
        }
    }
}

/// A value for a map column: mostly well formed.
#[derive(Arbitrary, Debug)]
enum MapV {
    Map(Vec<(Key, Val)>),
    KeySet(Vec<Key>),
    OneKey(Key),
    Raw(J),
}

impl MapV {
    fn to_json(&self) -> Value {
        match self {
            MapV::Map(pairs) => {
                json!(["map", pairs.iter().map(|(k, v)| json!([k.text(), v.text()])).collect::<Vec<_>>()])
            }
            MapV::KeySet(keys) => json!(["set", keys.iter().map(Key::text).collect::<Vec<_>>()]),
            MapV::OneKey(k) => json!(k.text()),
            MapV::Raw(j) => j.to_json(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Table {
    Lsp,
    Ls,
    Raw(J),
}

impl Table {
    fn to_json(&self) -> Value {
        match self {
            Table::Lsp => json!("Logical_Switch_Port"),
            Table::Ls => json!("Logical_Switch"),
            Table::Raw(j) => j.to_json(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Func {
    Eq,
    Ne,
    Includes,
    Excludes,
    Lt,
}

impl Func {
    fn text(&self) -> &'static str {
        match self {
            Func::Eq => "==",
            Func::Ne => "!=",
            Func::Includes => "includes",
            Func::Excludes => "excludes",
            Func::Lt => "<",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Ref {
    Known(u8),
    Named(u8),
    Unknown,
    Raw(J),
}

impl Ref {
    fn to_json(&self) -> Value {
        match self {
            Ref::Known(i) => json!(["uuid", UUIDS[*i as usize % UUIDS.len()]]),
            Ref::Named(i) => json!(["named-uuid", format!("n{}", i % 3)]),
            Ref::Unknown => json!(["uuid", "99999999-9999-9999-9999-999999999999"]),
            Ref::Raw(j) => j.to_json(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Cond {
    Name(Func, u8),
    Uuid(Func, Ref),
    Options(Func, MapV),
    ExternalIds(Func, MapV),
    Other(Func, J),
    Raw(J),
}

impl Cond {
    fn to_json(&self) -> Value {
        match self {
            Cond::Name(f, i) => json!(["name", f.text(), format!("vm{}", i % 7)]),
            Cond::Uuid(f, r) => json!(["_uuid", f.text(), r.to_json()]),
            Cond::Options(f, m) => json!(["options", f.text(), m.to_json()]),
            Cond::ExternalIds(f, m) => json!(["external_ids", f.text(), m.to_json()]),
            Cond::Other(f, j) => json!(["type", f.text(), j.to_json()]),
            Cond::Raw(j) => j.to_json(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Row {
    name: Option<u8>,
    options: Option<MapV>,
    external_ids: Option<MapV>,
    other: Option<J>,
}

impl Row {
    fn to_json(&self) -> Value {
        let mut row = Map::new();
        if let Some(i) = self.name {
            row.insert("name".into(), json!(format!("vm{}", i % 7)));
        }
        if let Some(m) = &self.options {
            row.insert("options".into(), m.to_json());
        }
        if let Some(m) = &self.external_ids {
            row.insert("external_ids".into(), m.to_json());
        }
        if let Some(j) = &self.other {
            row.insert("enabled".into(), j.to_json());
        }
        Value::Object(row)
    }
}

#[derive(Arbitrary, Debug)]
enum Column {
    Options,
    ExternalIds,
    Other,
}

#[derive(Arbitrary, Debug)]
enum Mutator {
    Insert,
    Delete,
    Other,
}

#[derive(Arbitrary, Debug)]
struct Mutation(Column, Mutator, MapV);

impl Mutation {
    fn to_json(&self) -> Value {
        let col = match self.0 {
            Column::Options => "options",
            Column::ExternalIds => "external_ids",
            Column::Other => "tag",
        };
        let m = match self.1 {
            Mutator::Insert => "insert",
            Mutator::Delete => "delete",
            Mutator::Other => "+=",
        };
        json!([col, m, self.2.to_json()])
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert { table: Table, uuid_name: Option<u8>, uuid: Option<Ref>, row: Row },
    Update { table: Table, conds: Vec<Cond>, row: Row },
    Mutate { table: Table, conds: Vec<Cond>, mutations: Vec<Mutation> },
    Delete { table: Table, conds: Vec<Cond> },
    Select { table: Table, conds: Vec<Cond> },
    Wait { table: Table, conds: Vec<Cond>, rows: Vec<Row> },
    Comment,
    Commit(bool),
    Abort,
    Raw(J),
}

impl Op {
    fn to_json(&self) -> Value {
        let conds = |c: &Vec<Cond>| Value::Array(c.iter().map(Cond::to_json).collect());
        match self {
            Op::Insert { table, uuid_name, uuid, row } => {
                let mut op = json!({"op": "insert", "table": table.to_json(), "row": row.to_json()});
                if let Some(n) = uuid_name {
                    op["uuid-name"] = json!(format!("n{}", n % 3));
                }
                if let Some(u) = uuid {
                    op["uuid"] = match u.to_json() {
                        Value::Array(a) if a.len() == 2 => a[1].clone(),
                        other => other,
                    };
                }
                op
            }
            Op::Update { table, conds: c, row } => {
                json!({"op": "update", "table": table.to_json(), "where": conds(c), "row": row.to_json()})
            }
            Op::Mutate { table, conds: c, mutations } => json!({"op": "mutate", "table": table.to_json(),
                "where": conds(c), "mutations": mutations.iter().map(Mutation::to_json).collect::<Vec<_>>()}),
            Op::Delete { table, conds: c } => {
                json!({"op": "delete", "table": table.to_json(), "where": conds(c)})
            }
            Op::Select { table, conds: c } => {
                json!({"op": "select", "table": table.to_json(), "where": conds(c)})
            }
            Op::Wait { table, conds: c, rows } => {
                json!({"op": "wait", "table": table.to_json(), "where": conds(c),
                "columns": ["options"], "until": "==", "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>()})
            }
            Op::Comment => json!({"op": "comment", "comment": "fuzz"}),
            Op::Commit(durable) => json!({"op": "commit", "durable": durable}),
            Op::Abort => json!({"op": "abort"}),
            Op::Raw(j) => j.to_json(),
        }
    }
}

/// serde_json refuses JSON nested deeper than this: params that deep are forwarded as they came
/// (no OVSDB op nests so deep; the server refuses the transaction). An `id` is read up to
/// `MAX_DEPTH` levels, as deep as ovsdb-server reads.
const SERDE_DEPTH: usize = 128;
const MAX_DEPTH: usize = 1000;

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    other_db: bool,
    ops: Vec<Op>,
    /// The server's result, for `Trim::apply`.
    result: Vec<J>,
    result_raw: Option<J>,
    id: J,
    spelling: Spelling,
}

fuzz_target!(|input: Input| {
    let view = view();
    let cfg = PolicyConfig::default();
    let mut params = vec![json!(if input.other_db { "_Server" } else { "OVN_Northbound" })];
    params.extend(input.ops.iter().map(Op::to_json));
    let params = Value::Array(params);
    let n = input.ops.len();

    let plan = plan_transact(&params, &view, &cfg);
    if let Some(t) = plan.trim() {
        assert!(t.client_ops == n && t.upstream_ops > n && plan.rewrite().is_some(), "trim {t:?} of {n} ops");
    }
    let trim = plan.trim().unwrap_or(Trim { client_ops: n, upstream_ops: n });
    if let Some(rewritten) = &plan.params_after(&params) {
        assert!(!input.other_db, "rewrote a transaction on another database");
        assert!(!plan.changes.is_empty(), "a rewrite without a change");
        let ops = rewritten.as_array().expect("rewritten params are an array");
        assert_eq!(ops.len(), 1 + trim.upstream_ops, "op count");
        assert_eq!(ops[0], params[0], "database name changed");
        for k in 1..=n {
            for member in ["op", "table", "where"] {
                assert_eq!(ops[k].get(member), params[k].get(member), "op {k}: {member} changed");
            }
        }
        for op in &ops[n + 1..] {
            assert_eq!(op["op"], "mutate", "appended a non-mutate: {op}");
            assert_eq!(op["table"], "Logical_Switch_Port");
        }
        // Idempotent: the rewritten transaction already says what the policy wants.
        let again = plan_transact(rewritten, &view, &cfg);
        assert!(
            again.changes.is_empty() && again.rewrite().is_none(),
            "re-planning the rewrite changes it again:\nparams {params}\nrewritten {rewritten}\nagain {:?}",
            again
        );
    } else {
        assert!(plan.trim().is_none());
    }

    // The reply side: never a panic, the client's results kept.
    let result = match &input.result_raw {
        Some(j) => j.to_json(),
        None => Value::Array(input.result.iter().map(J::to_json).collect()),
    };
    let mapped = trim.apply(&result);
    if let (Some(items), Some(out)) = (result.as_array(), mapped.as_array()) {
        let keep = n.min(items.len());
        assert_eq!(&out[..keep.min(out.len())], &items[..keep.min(out.len())]);
        assert!(out.len() <= n.max(items.len()) + 1);
    }
    let _ = Trim { client_ops: input.result.len() % 5, upstream_ops: input.ops.len() % 7 }.apply(&result);

    // The same through the wire glue: the envelope is kept, params are the plan's.
    let id = input.id.to_json();
    let msg = json!({"id": id, "method": "transact", "params": params});
    let raw = Bytes::from(serde_json::to_vec(&msg).expect("serialise"));

    // The fast path: where nothing migrates, what it lets pass is what the plan forwards as is.
    let quiet = quiet_view();
    let respelt = Bytes::from(respell(&String::from_utf8_lossy(&raw), input.spelling));
    for raw in [&raw, &respelt] {
        if may_touch_ports(raw) && !must_plan(raw, &cfg, true) {
            if let Some(ins) = inspect_request(raw, &quiet, &cfg) {
                assert!(
                    ins.plan.rewrite().is_none() && ins.plan.changes.is_empty() && ins.plan.skips.is_empty(),
                    "the fast path passed a message the plan acts on:\n{}\n{:?}",
                    String::from_utf8_lossy(raw),
                    ins.plan
                );
            }
        }
        assert!(must_plan(raw, &cfg, false), "a view with migrations always plans");
    }
    if let Some(ins) = inspect_request(&raw, &view, &cfg) {
        assert!(!id.is_null());
        // The wire reads each op's text, and only the ops that can matter: the same plan, but
        // for an op the policy cannot read that it did not need to read (the server judges it).
        // (An op nested past serde_json's limit is not read from its text.)
        if plan.unhandled.is_none() && depth(&params) < SERDE_DEPTH {
            assert_eq!(ins.plan, plan);
        }
        // (What serde_json itself cannot read back is not compared.)
        if let Some(sent) = ins.rewritten().filter(|_| depth(&msg) < SERDE_DEPTH && ins.plan == plan) {
            let sent: Value = serde_json::from_slice(&sent).unwrap_or_else(|e| {
                panic!(
                    "rewritten message: {e}\noriginal {}\nrewritten {}",
                    msg,
                    String::from_utf8_lossy(&sent)
                )
            });
            assert_eq!(sent["id"], id);
            assert_eq!(sent["method"], "transact");
            assert_eq!(Some(sent["params"].clone()), plan.params_after(&params));
        }
        if let Some((key, pending)) = ins.pending().filter(|_| ins.plan == plan) {
            let mut map = PendingMap::new();
            map.insert(key, pending);
            let reply = json!({"id": id, "result": result, "error": null});
            let readable = depth(&reply) < SERDE_DEPTH;
            let reply = serde_json::to_vec(&reply).expect("serialise");
            if let Some(answered) = fix_reply(&reply, &mut map).filter(|_| readable) {
                assert_eq!(answered.pending.changes, plan.changes);
                match answered.bytes {
                    Some(fixed) => {
                        let fixed: Value = serde_json::from_slice(&fixed).expect("fixed reply is JSON");
                        assert_eq!(fixed["id"], id);
                        assert_eq!(fixed["result"], mapped);
                    }
                    // Forwarded as it came: only when nothing was appended (nothing to trim).
                    None => assert!(plan.trim().is_none() || mapped == result),
                }
            }
            // (A transact result from ovsdb-server is a few levels deep; an arbitrary one may not
            // be readable.)
            assert!(map.is_empty() || !readable, "the awaited reply was not recognised");
        }
    } else if !id.is_null()
        && !input.other_db
        && plan.rewrite().is_some()
        && depth(&params) < SERDE_DEPTH
        && depth(&id) < MAX_DEPTH
    {
        panic!("the glue skipped a transaction the policy rewrites");
    }
});
