//! Transaction planning: simulate the client's ops over working copies of the affected rows,
//! decide per row, then rewrite (in place when safe, else by appending a `mutate`).

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::decide::{desired_with, option_mutations, port_label, where_uuid, Pre};
use super::value::{
    is_map, map_json, map_pairs, parse_str_map, parse_str_scalar, parse_str_set, parse_uuid, Malformed,
    StrMap, UuidRef,
};
use super::{
    may_spell_destination_key, Change, LspState, LspView, Opts, Plan, PolicyConfig, Rewrite, Skip,
    SkipReason, Unhandled, ACTIVATION_STRATEGY, LSP_TABLE, NB_DB, REQUESTED_CHASSIS,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MapCol {
    Options,
    ExternalIds,
}

impl MapCol {
    fn parse(column: &str) -> Option<MapCol> {
        match column {
            "options" => Some(MapCol::Options),
            "external_ids" => Some(MapCol::ExternalIds),
            _ => None,
        }
    }

    fn of(self, row: &LspState) -> &StrMap {
        match self {
            MapCol::Options => &row.options,
            MapCol::ExternalIds => &row.external_ids,
        }
    }

    fn of_mut(self, row: &mut LspState) -> &mut StrMap {
        match self {
            MapCol::Options => &mut row.options,
            MapCol::ExternalIds => &mut row.external_ids,
        }
    }
}

/// A mutation of a map column (RFC 7047 §5.1 with OVS semantics: `insert` never overwrites,
/// `delete` by map removes a pair only when key and value both match).
#[derive(Debug)]
enum Mutation {
    Insert(MapCol, StrMap),
    DeleteKeys(MapCol, Vec<String>),
    DeletePairs(MapCol, StrMap),
}

impl Mutation {
    fn col(&self) -> MapCol {
        match self {
            Mutation::Insert(c, _) | Mutation::DeleteKeys(c, _) | Mutation::DeletePairs(c, _) => *c,
        }
    }

    fn apply(&self, row: &mut LspState) {
        let map = self.col().of_mut(row);
        match self {
            Mutation::Insert(_, pairs) => {
                for (k, v) in pairs {
                    map.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            Mutation::DeleteKeys(_, keys) => {
                for k in keys {
                    map.remove(k);
                }
            }
            Mutation::DeletePairs(_, pairs) => {
                for (k, v) in pairs {
                    if map.get(k) == Some(v) {
                        map.remove(k);
                    }
                }
            }
        }
    }
}

/// The columns of a `row` (insert or update) that the policy tracks.
#[derive(Debug, Default)]
struct RowWrite {
    name: Option<String>,
    options: Option<StrMap>,
    external_ids: Option<StrMap>,
}

impl RowWrite {
    fn parse(row: &Map<String, Value>) -> Result<RowWrite, Malformed> {
        Ok(RowWrite {
            name: row.get("name").map(parse_str_scalar).transpose()?,
            options: row.get("options").map(parse_str_map).transpose()?,
            external_ids: row.get("external_ids").map(parse_str_map).transpose()?,
        })
    }

    fn writes_maps(&self) -> bool {
        self.options.is_some() || self.external_ids.is_some()
    }

    fn apply(&self, row: &mut LspState) {
        if let Some(name) = &self.name {
            row.name.clone_from(name);
        }
        if let Some(options) = &self.options {
            row.options.clone_from(options);
        }
        if let Some(ext) = &self.external_ids {
            row.external_ids.clone_from(ext);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MapFunc {
    Eq,
    Ne,
    Includes,
    Excludes,
}

/// One `where` condition, on a column the policy can evaluate, or `Other`.
#[derive(Debug)]
enum Cond {
    Const(bool),
    Uuid { eq: bool, target: UuidRef },
    Name { eq: bool, value: String },
    Map { col: MapCol, func: MapFunc, map: StrMap },
    Other,
}

impl Cond {
    fn parse(c: &Value) -> Result<Cond, Malformed> {
        if let Value::Bool(b) = c {
            return Ok(Cond::Const(*b));
        }
        let Some([Value::String(column), Value::String(func), value]) = c.as_array().map(Vec::as_slice)
        else {
            return Err(Malformed("condition is not [column, function, value]"));
        };
        let scalar_eq = |func: &str| match func {
            "==" | "includes" => Ok(true),
            "!=" | "excludes" => Ok(false),
            _ => Err(Malformed("bad function for a scalar column")),
        };
        Ok(match column.as_str() {
            "_uuid" => Cond::Uuid { eq: scalar_eq(func)?, target: parse_uuid(value)? },
            "name" => Cond::Name { eq: scalar_eq(func)?, value: parse_str_scalar(value)? },
            col => match MapCol::parse(col) {
                Some(col) => {
                    let func = match func.as_str() {
                        "==" => MapFunc::Eq,
                        "!=" => MapFunc::Ne,
                        "includes" => MapFunc::Includes,
                        "excludes" => MapFunc::Excludes,
                        _ => return Err(Malformed("bad function for a map column")),
                    };
                    Cond::Map { col, func, map: parse_str_map(value)? }
                }
                None => Cond::Other,
            },
        })
    }

    /// Whether `row` satisfies the condition; `Other` is not evaluated (true).
    fn holds(&self, row: &LspState, named: Option<&str>) -> bool {
        match self {
            Cond::Const(b) => *b,
            Cond::Uuid { eq, target: UuidRef::Uuid(u) } => (!row.uuid.is_empty() && &row.uuid == u) == *eq,
            Cond::Uuid { eq, target: UuidRef::Named(n) } => (named == Some(n.as_str())) == *eq,
            Cond::Name { eq, value } => (&row.name == value) == *eq,
            Cond::Map { col, func, map } => {
                let have = col.of(row);
                match func {
                    MapFunc::Eq => have == map,
                    MapFunc::Ne => have != map,
                    MapFunc::Includes => map.iter().all(|(k, v)| have.get(k) == Some(v)),
                    MapFunc::Excludes => map.iter().all(|(k, v)| have.get(k) != Some(v)),
                }
            }
            Cond::Other => true,
        }
    }
}

fn parse_where(op: &Map<String, Value>) -> Result<Vec<Cond>, Malformed> {
    op.get("where")
        .and_then(Value::as_array)
        .ok_or(Malformed("op has no where array"))?
        .iter()
        .map(Cond::parse)
        .collect()
}

/// One client op, as far as the policy is concerned.
#[derive(Debug)]
enum Step {
    /// Insert into `Logical_Switch_Port`.
    Insert {
        write: RowWrite,
        uuid_name: Option<String>,
        uuid: Option<String>,
    },
    /// Insert into another table: only its uuid-name matters.
    OtherInsert {
        uuid_name: Option<String>,
    },
    Update {
        conds: Vec<Cond>,
        write: RowWrite,
    },
    /// Only the mutations of `options` / `external_ids` are kept.
    Mutate {
        conds: Vec<Cond>,
        muts: Vec<Mutation>,
    },
    Delete {
        conds: Vec<Cond>,
    },
    /// Reads, waits, comments, other tables, LSP writes to other columns.
    Ignore,
}

impl Step {
    /// Whether an in-place edit of this op can set the row's options.
    fn can_edit_options(&self) -> bool {
        match self {
            Step::Insert { .. } => true,
            Step::Update { write, .. } => write.options.is_some(),
            Step::Mutate { muts, .. } => muts.iter().any(|m| m.col() == MapCol::Options),
            _ => false,
        }
    }

    fn parse(op: &Value) -> Result<Step, Malformed> {
        let op = op.as_object().ok_or(Malformed("op is not an object"))?;
        let kind = op.get("op").and_then(Value::as_str).ok_or(Malformed("op has no \"op\" string"))?;
        match kind {
            "insert" | "update" | "mutate" | "delete" | "select" | "wait" => {}
            "comment" | "commit" | "abort" | "assert" => return Ok(Step::Ignore),
            _ => return Err(Malformed("unknown op")),
        }
        let table = op.get("table").and_then(Value::as_str).ok_or(Malformed("op has no table"))?;
        let uuid_name = match op.get("uuid-name") {
            Some(v) if kind == "insert" => {
                Some(v.as_str().ok_or(Malformed("uuid-name is not a string"))?.to_owned())
            }
            _ => None,
        };
        if table != LSP_TABLE {
            return Ok(if kind == "insert" { Step::OtherInsert { uuid_name } } else { Step::Ignore });
        }
        let row = || op.get("row").and_then(Value::as_object).ok_or(Malformed("op has no row object"));
        Ok(match kind {
            "insert" => {
                let uuid = match op.get("uuid") {
                    Some(v) => Some(v.as_str().ok_or(Malformed("uuid is not a string"))?.to_owned()),
                    None => None,
                };
                Step::Insert { write: RowWrite::parse(row()?)?, uuid_name, uuid }
            }
            "update" => {
                let write = RowWrite::parse(row()?)?;
                if write.name.is_none() && !write.writes_maps() {
                    return Ok(Step::Ignore);
                }
                Step::Update { conds: parse_where(op)?, write }
            }
            "mutate" => {
                let list = op
                    .get("mutations")
                    .and_then(Value::as_array)
                    .ok_or(Malformed("op has no mutations array"))?;
                let mut muts = Vec::new();
                for m in list {
                    let Some([Value::String(column), Value::String(mutator), value]) =
                        m.as_array().map(Vec::as_slice)
                    else {
                        return Err(Malformed("mutation is not [column, mutator, value]"));
                    };
                    let Some(col) = MapCol::parse(column) else { continue };
                    muts.push(match (mutator.as_str(), value) {
                        ("insert", v) => Mutation::Insert(col, parse_str_map(v)?),
                        ("delete", v) if is_map(v) => Mutation::DeletePairs(col, parse_str_map(v)?),
                        ("delete", v) => Mutation::DeleteKeys(col, parse_str_set(v)?),
                        _ => return Err(Malformed("bad mutator for a map column")),
                    });
                }
                if muts.is_empty() {
                    return Ok(Step::Ignore);
                }
                Step::Mutate { conds: parse_where(op)?, muts }
            }
            "delete" => Step::Delete { conds: parse_where(op)? },
            _ => Step::Ignore,
        })
    }
}

/// A working copy of one row touched by the transaction.
#[derive(Debug)]
struct Work {
    /// The view's row; `None` for a row inserted by this transaction.
    pre: Option<LspState>,
    /// The row after the ops simulated so far (uuid empty for an insert without `uuid`).
    cur: LspState,
    named: Option<String>,
    deleted: bool,
    /// An op with an unresolved `where` may or may not have written this row.
    tainted: bool,
    /// The row had a destination tag at some point (pre-state included).
    ever_tagged: bool,
    /// Last op that wrote `options` or `external_ids`, and whether it matched this row alone.
    last_write: Option<(usize, bool)>,
    /// The row's `external_ids` after the transaction come from the client (inserted, or
    /// written whole by an `update`), not from the proxy's cache: the migration state the
    /// decision rests on is the client's own.
    ext_from_client: bool,
}

/// A row an op may match: already a working copy, or still only in the view.
enum Cand {
    Row(usize),
    View(LspState),
}

struct Sim<'a> {
    view: &'a dyn LspView,
    cfg: &'a PolicyConfig,
    rows: Vec<Work>,
    by_uuid: HashMap<String, usize>,
    /// Every name a working row has had → those rows (checked against the row's name now).
    by_name: HashMap<String, Vec<usize>>,
    /// uuid-name → working row (`None`: a row of another table).
    named: HashMap<String, Option<usize>>,
    /// An op with an unresolved `where` wrote maps: later ops' match counts are not certain.
    uncertain: bool,
    /// The most view rows a `where` that names no row may walk (a scan of the whole table).
    max_scan: usize,
    /// A scan past `max_scan` was needed: the plan is not made here.
    scan_refused: bool,
}

impl<'a> Sim<'a> {
    fn new(view: &'a dyn LspView, cfg: &'a PolicyConfig) -> Self {
        Sim {
            view,
            cfg,
            rows: Vec::new(),
            by_uuid: HashMap::new(),
            by_name: HashMap::new(),
            named: HashMap::new(),
            uncertain: false,
            max_scan: usize::MAX,
            scan_refused: false,
        }
    }

    fn tagged(&self, row: &LspState) -> bool {
        row.external_ids.get(&self.cfg.destination_key).is_some_and(|d| !d.trim().is_empty())
    }

    fn push(&mut self, pre: Option<LspState>, cur: LspState, named: Option<String>) -> usize {
        let i = self.rows.len();
        if !cur.uuid.is_empty() {
            self.by_uuid.insert(cur.uuid.clone(), i);
        }
        self.by_name.entry(cur.name.clone()).or_default().push(i);
        let ever_tagged = self.tagged(&cur);
        self.rows.push(Work {
            pre,
            cur,
            named,
            deleted: false,
            tainted: false,
            ever_tagged,
            last_write: None,
            ext_from_client: false,
        });
        i
    }

    /// The working rows named `name` now, each once, in order.
    fn named_rows<'s>(&'s self, name: &'s str) -> impl Iterator<Item = usize> + 's {
        let mut seen = self.by_name.get(name).map(Vec::as_slice).unwrap_or_default().to_vec();
        seen.sort_unstable();
        seen.dedup();
        seen.into_iter().filter(move |&i| self.rows[i].cur.name == name)
    }

    fn register_name(&mut self, name: Option<String>, row: Option<usize>) -> Result<(), Malformed> {
        if let Some(name) = name {
            if self.named.insert(name, row).is_some() {
                return Err(Malformed("duplicate uuid-name"));
            }
        }
        Ok(())
    }

    /// The rows an op's `where` matches (live rows only), materialising view rows as needed, and
    /// whether that set is certain (no condition on a column the policy cannot evaluate).
    fn resolve(&mut self, conds: &[Cond]) -> Result<(Vec<usize>, bool), Malformed> {
        for c in conds {
            if let Cond::Uuid { target: UuidRef::Named(n), .. } = c {
                if !self.named.contains_key(n) {
                    return Err(Malformed("where names an unknown uuid-name"));
                }
            }
        }
        let certain = !conds.iter().any(|c| matches!(c, Cond::Other));
        if conds.iter().any(|c| matches!(c, Cond::Const(false))) {
            return Ok((Vec::new(), certain));
        }
        let mut cands: Vec<Cand> = Vec::new();
        let uuid_eq = conds.iter().find_map(|c| match c {
            Cond::Uuid { eq: true, target } => Some(target),
            _ => None,
        });
        let name_eq = conds.iter().find_map(|c| match c {
            Cond::Name { eq: true, value } => Some(value),
            _ => None,
        });
        if let Some(target) = uuid_eq {
            match target {
                UuidRef::Uuid(u) => match self.by_uuid.get(u) {
                    Some(&i) => cands.push(Cand::Row(i)),
                    None => cands.extend(self.view.by_uuid(u).map(Cand::View)),
                },
                UuidRef::Named(n) => cands.extend(self.named.get(n).copied().flatten().map(Cand::Row)),
            }
        } else if let Some(name) = name_eq {
            cands.extend(self.named_rows(name).map(Cand::Row));
            if let Some(s) = self.view.by_name(name) {
                if !self.by_uuid.contains_key(&s.uuid) {
                    cands.push(Cand::View(s));
                }
            }
        } else {
            if self.view.size() > self.max_scan {
                self.scan_refused = true;
                return Ok((Vec::new(), certain));
            }
            cands.extend((0..self.rows.len()).map(Cand::Row));
            let by_uuid = &self.by_uuid;
            cands.extend(
                self.view.all().into_iter().filter(|s| !by_uuid.contains_key(&s.uuid)).map(Cand::View),
            );
        }
        let mut out = Vec::new();
        for cand in cands {
            match cand {
                Cand::Row(i) => {
                    let w = &self.rows[i];
                    if !w.deleted && conds.iter().all(|c| c.holds(&w.cur, w.named.as_deref())) {
                        out.push(i);
                    }
                }
                Cand::View(s) => {
                    if conds.iter().all(|c| c.holds(&s, None)) {
                        out.push(self.push(Some(s.clone()), s, None));
                    }
                }
            }
        }
        Ok((out, certain))
    }

    /// Applies a write to the matched rows.
    fn write(
        &mut self,
        k: usize,
        rows: &[usize],
        certain: bool,
        writes_maps: bool,
        f: impl Fn(&mut LspState),
    ) {
        let single = rows.len() == 1 && certain && !self.uncertain;
        for &i in rows {
            let name = self.rows[i].cur.name.clone();
            f(&mut self.rows[i].cur);
            if self.rows[i].cur.name != name {
                self.by_name.entry(self.rows[i].cur.name.clone()).or_default().push(i);
            }
            let tagged = self.tagged(&self.rows[i].cur);
            let w = &mut self.rows[i];
            w.ever_tagged |= tagged;
            if writes_maps {
                w.last_write = Some((k, single));
                w.tainted |= !certain;
            }
        }
        if writes_maps && !certain {
            self.uncertain = true;
        }
    }

    fn step(&mut self, k: usize, step: &Step) -> Result<(), Malformed> {
        match step {
            Step::Ignore => {}
            Step::OtherInsert { uuid_name } => self.register_name(uuid_name.clone(), None)?,
            Step::Insert { write, uuid_name, uuid } => {
                if let Some(u) = uuid {
                    if self.by_uuid.contains_key(u) || self.view.by_uuid(u).is_some() {
                        return Err(Malformed("insert reuses an existing uuid"));
                    }
                }
                let mut cur = LspState { uuid: uuid.clone().unwrap_or_default(), ..LspState::default() };
                write.apply(&mut cur);
                let i = self.push(None, cur, uuid_name.clone());
                self.rows[i].last_write = Some((k, true));
                self.rows[i].ext_from_client = true;
                self.register_name(uuid_name.clone(), Some(i))?;
            }
            Step::Update { conds, write } => {
                let (rows, certain) = self.resolve(conds)?;
                // An unresolved rename alone is ignored, as any other unresolved non-map write.
                if certain || write.writes_maps() {
                    self.write(k, &rows, certain, write.writes_maps(), |r| write.apply(r));
                    if write.external_ids.is_some() {
                        for &i in &rows {
                            self.rows[i].ext_from_client = true;
                        }
                    }
                }
            }
            Step::Mutate { conds, muts } => {
                let (rows, certain) = self.resolve(conds)?;
                self.write(k, &rows, certain, true, |r| muts.iter().for_each(|m| m.apply(r)));
            }
            Step::Delete { conds } => {
                let (rows, certain) = self.resolve(conds)?;
                if certain {
                    for i in rows {
                        self.rows[i].deleted = true;
                    }
                }
            }
        }
        Ok(())
    }
}

/// JSON text written directly: a bulk transaction appends thousands of fixes, and building a
/// `Value` for each cost more than planning them.
struct Text(Vec<u8>);

impl Text {
    fn raw(&mut self, s: &str) -> &mut Self {
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    /// A JSON string, escaped.
    fn str(&mut self, s: &str) -> &mut Self {
        let _ = serde_json::to_writer(&mut self.0, s);
        self
    }

    /// `["map", [[k, v], ...]]`.
    fn map<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> &mut Self {
        self.raw(r#"["map",["#);
        for (i, (k, v)) in pairs.into_iter().enumerate() {
            if i > 0 {
                self.raw(",");
            }
            self.raw("[").str(k).raw(",").str(v).raw("]");
        }
        self.raw("]]")
    }

    fn value(&mut self, v: &Value) {
        let _ = serde_json::to_writer(&mut self.0, v);
    }
}

fn pairs(m: &StrMap) -> impl Iterator<Item = (&str, &str)> {
    m.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// The text of an appended `mutate` that makes one row's two keys `opts`; `where_` writes its
/// `where`. The same op as [`mutate_op`] builds.
fn fix_text(where_: impl FnOnce(&mut Text), opts: &Opts) -> String {
    let mut t = Text(Vec::with_capacity(384));
    t.raw(r#"{"op":"mutate","table":"#).str(LSP_TABLE).raw(r#","where":"#);
    where_(&mut t);
    t.raw(r#","mutations":[["options","delete",["set",["#)
        .str(REQUESTED_CHASSIS)
        .raw(",")
        .str(ACTIVATION_STRATEGY)
        .raw("]]]");
    let set = opts.pairs();
    if !set.is_empty() {
        t.raw(r#",["options","insert","#).map(set).raw("]");
    }
    t.raw("]}");
    String::from_utf8(t.0).unwrap_or_default()
}

/// Replaces the two keys in an insert's or update's `row.options`, keeping the writer's pairs.
fn edit_row_options(op: &mut Value, opts: &Opts) {
    let Some(row) = op.get_mut("row").and_then(Value::as_object_mut) else { return };
    let kept: Vec<(String, String)> = row
        .get("options")
        .and_then(|v| map_pairs(v).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| *k != REQUESTED_CHASSIS && *k != ACTIVATION_STRATEGY)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let pairs = kept.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(opts.pairs());
    row.insert("options".to_owned(), map_json(pairs));
}

/// Appends the delete+insert mutations to a client's `mutate`.
fn edit_mutations(op: &mut Value, opts: &Opts) {
    if let Some(list) = op.get_mut("mutations").and_then(Value::as_array_mut) {
        list.extend(option_mutations(opts));
    }
}

/// Plans one `transact`: `params` is `[db, op, op, ...]`. Anything other than `OVN_Northbound`,
/// or an op shape the policy does not understand, is forwarded untouched.
pub fn plan_transact(params: &Value, view: &dyn LspView, cfg: &PolicyConfig) -> Plan {
    plan_transact_within(params, view, cfg, usize::MAX).unwrap_or_else(|| Plan::forward(0))
}

/// `plan_transact`, unless a `where` that names no row would walk more than `max_scan` ports
/// of the view (`None`: plan it where a long walk does not matter, off the event loop).
pub fn plan_transact_within(
    params: &Value,
    view: &dyn LspView,
    cfg: &PolicyConfig,
    max_scan: usize,
) -> Option<Plan> {
    let Some((db, ops)) = params.as_array().and_then(|a| a.split_first()) else {
        return Some(Plan::forward(0));
    };
    if db.as_str() != Some(NB_DB) || ops.is_empty() {
        return Some(Plan::forward(ops.len()));
    }
    plan_ops(&Ops::Values(ops), view, cfg, max_scan)
}

/// `plan_transact_within` on the params as the client wrote them (`[db, op, op, ...]`, each
/// op's text): only the ops that can matter are parsed. An op on another table, a read, and,
/// when no op spells the destination tag key (nor holds a JSON escape that could), an insert
/// of a port (a new port no op tags cannot need the policy) are read no further than their
/// `op`, `table` and `uuid-name`. `None`: planned off the event loop, as `plan_transact_within`.
pub fn plan_transact_raw(
    db: &RawValue,
    ops: &[&RawValue],
    view: &dyn LspView,
    cfg: &PolicyConfig,
    max_scan: usize,
) -> Option<Plan> {
    if serde_json::from_str::<Cow<str>>(db.get()).ok().as_deref() != Some(NB_DB) || ops.is_empty() {
        return Some(Plan::forward(ops.len()));
    }
    let tag_free = !ops.iter().any(|op| may_spell_destination_key(op.get().as_bytes(), cfg));
    plan_ops(&Ops::Raw { ops, tag_free }, view, cfg, max_scan)
}

/// The client's ops, as the planner reads them: values already parsed, or each op's text.
enum Ops<'a> {
    Values(&'a [Value]),
    Raw { ops: &'a [&'a RawValue], tag_free: bool },
}

/// What an op says before its row, where and mutations: enough to pass over most ops.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    table: Option<Cow<'a, str>>,
    #[serde(rename = "uuid-name", borrow, default)]
    uuid_name: Option<Cow<'a, str>>,
}

impl Head<'_> {
    /// The step, when the head alone decides it (else the whole op is parsed, which also
    /// gives the error for anything malformed).
    fn step(&self, tag_free: bool) -> Option<Step> {
        let kind = self.op.as_deref()?;
        match kind {
            "comment" | "commit" | "abort" | "assert" => return Some(Step::Ignore),
            "insert" | "update" | "mutate" | "delete" | "select" | "wait" => {}
            _ => return None,
        }
        let other = self.table.as_deref()? != LSP_TABLE;
        match kind {
            "insert" if other || tag_free => {
                Some(Step::OtherInsert { uuid_name: self.uuid_name.as_ref().map(|n| n.to_string()) })
            }
            "select" | "wait" => Some(Step::Ignore),
            _ => other.then_some(Step::Ignore),
        }
    }
}

impl Ops<'_> {
    fn len(&self) -> usize {
        match self {
            Ops::Values(v) => v.len(),
            Ops::Raw { ops, .. } => ops.len(),
        }
    }

    fn step(&self, k: usize) -> Result<Step, Malformed> {
        match self {
            Ops::Values(v) => Step::parse(&v[k]),
            Ops::Raw { ops, tag_free } => {
                let head = serde_json::from_str::<Head>(ops[k].get()).ok();
                match head.and_then(|h| h.step(*tag_free)) {
                    Some(step) => Ok(step),
                    None => {
                        Step::parse(&self.value(k).ok_or(Malformed("op is not JSON the policy can read"))?)
                    }
                }
            }
        }
    }

    /// Op `k`, to edit.
    fn value(&self, k: usize) -> Option<Value> {
        match self {
            Ops::Values(v) => v.get(k).cloned(),
            Ops::Raw { ops, .. } => serde_json::from_str(ops.get(k)?.get()).ok(),
        }
    }
}

fn plan_ops(ops: &Ops, view: &dyn LspView, cfg: &PolicyConfig, max_scan: usize) -> Option<Plan> {
    let mut sim = Sim::new(view, cfg);
    sim.max_scan = max_scan;
    let plan = plan_with(ops, view, cfg, &mut sim);
    (!sim.scan_refused).then_some(plan)
}

fn plan_with(ops: &Ops, view: &dyn LspView, cfg: &PolicyConfig, sim: &mut Sim) -> Plan {
    let n = ops.len();
    let unhandled = |op: Option<usize>, e: Malformed| Plan {
        unhandled: Some(Unhandled { op, what: e.0 }),
        ..Plan::forward(n)
    };

    let mut steps = Vec::with_capacity(n);
    for k in 0..n {
        match ops.step(k) {
            Ok(step) => steps.push(step),
            Err(e) => return unhandled(Some(k), e),
        }
    }
    if steps.iter().all(|s| matches!(s, Step::Ignore | Step::OtherInsert { .. })) {
        return Plan::forward(n);
    }
    for (k, step) in steps.iter().enumerate() {
        if let Err(e) = sim.step(k, step) {
            return unhandled(Some(k), e);
        }
    }

    let mut plan = Plan::forward(n);
    let mut edited: Vec<(usize, Value)> = Vec::new();
    let mut appended = Vec::new();
    for w in &sim.rows {
        let Some((k, single)) = w.last_write else { continue };
        if w.deleted {
            continue;
        }
        let port = || port_label(&w.cur, w.named.as_deref());
        if w.tainted {
            if w.ever_tagged {
                plan.skips.push(Skip { port: port(), reason: SkipReason::UnresolvedWhere, chosen: None });
            }
            continue;
        }
        let want = match desired_with(Pre::from_option(w.pre.as_ref()), &w.cur, cfg, view) {
            Ok(Some(want)) => want,
            Ok(None) => continue,
            Err(reason) => {
                let chosen = (reason == SkipReason::OperatorOverride)
                    .then(|| w.cur.options.get(REQUESTED_CHASSIS).cloned())
                    .flatten();
                plan.skips.push(Skip { port: port(), reason, chosen });
                continue;
            }
        };
        let before = Opts::of(&w.cur.options);
        if before == want.opts {
            continue;
        }
        let port = port();
        // In place only when the migration state the decision rests on is the client's own:
        // an edit computed from a cache one monitor round trip behind could not be taken back,
        // and would overwrite what the writer chose (a `requested-chassis` set on a finished
        // migration, say). Otherwise the fix is appended, conditional on the state assumed.
        if single && steps[k].can_edit_options() && w.ext_from_client {
            // `single`: op `k` wrote this row alone, so no other row edits it.
            if let Some(mut op) = ops.value(k) {
                match steps[k] {
                    Step::Mutate { .. } => edit_mutations(&mut op, &want.opts),
                    _ => edit_row_options(&mut op, &want.opts),
                }
                edited.push((k, op));
            }
        } else {
            let opts = &want.opts;
            let text = match (&w.pre, &w.named, w.cur.uuid.is_empty()) {
                // An existing row: what the proxy computed rests on its cache, which may be one
                // monitor round trip behind. The appended op only applies if the row is, after
                // the client's ops, as the proxy assumed in what the decision reads (every tag:
                // `external_ids` whole; `requested-chassis`: the pair, or the whole `options`
                // when the key is absent, since absence has no OVSDB condition of its own);
                // otherwise it matches nothing (not an error) and the reconciler decides from
                // the real state. Other option keys do not matter to the decision.
                (Some(pre), _, _) => fix_text(
                    |t| {
                        t.raw(r#"[["_uuid","==",["uuid","#).str(&pre.uuid).raw("]],");
                        match w.cur.options.get(REQUESTED_CHASSIS) {
                            Some(rc) => {
                                t.raw(r#"["options","includes","#).map([(REQUESTED_CHASSIS, rc.as_str())])
                            }
                            None => t.raw(r#"["options","==","#).map(pairs(&w.cur.options)),
                        };
                        t.raw(r#"],["external_ids","==","#).map(pairs(&w.cur.external_ids)).raw("]]");
                    },
                    opts,
                ),
                (None, Some(named), _) => {
                    fix_text(|t| t.value(&where_uuid(&UuidRef::Named(named.clone()))), opts)
                }
                (None, None, false) => {
                    fix_text(|t| t.value(&where_uuid(&UuidRef::Uuid(w.cur.uuid.clone()))), opts)
                }
                // A row inserted without a uuid-name: by its name, if that names it alone. Names
                // are indexed, so a transaction leaving two ports with one name fails anyway;
                // a `where` matching several rows would change them all.
                (None, None, true) if !w.cur.name.is_empty() && names_one_row(sim, view, &w.cur.name) => {
                    fix_text(|t| t.value(&json!([["name", "==", w.cur.name]])), opts)
                }
                (None, None, true) => {
                    plan.skips.push(Skip { port, reason: SkipReason::UnresolvedWhere, chosen: None });
                    continue;
                }
            };
            appended.push(text);
            plan.appended.push(plan.changes.len());
        }
        plan.changes.push(Change { port, before, after: want.opts, cause: want.cause });
    }
    if plan.changes.is_empty() {
        return plan;
    }
    plan.upstream_ops = n + appended.len();
    edited.sort_by_key(|(k, _)| *k);
    plan.rewritten = Some(Rewrite { edited, appended });
    plan
}

/// Whether `name` is, after the transaction, the name of exactly one port: one live simulated
/// row, and no port of the view that the transaction did not touch.
fn names_one_row(sim: &Sim, view: &dyn LspView, name: &str) -> bool {
    let live = sim.named_rows(name).filter(|&i| !sim.rows[i].deleted).count();
    let untouched = view.by_name(name).is_some_and(|s| !sim.by_uuid.contains_key(&s.uuid));
    live == 1 && !untouched
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Cause, StaticView};

    const U1: &str = "1fdf8404-9d1c-4b8e-a0f2-6b3d7c1e5a01";
    const U2: &str = "2a6e1f3b-4c5d-4e7f-8a9b-0c1d2e3f4a02";

    fn lsp(uuid: &str, name: &str, options: &[(&str, &str)], ext: &[(&str, &str)]) -> LspState {
        LspState {
            uuid: uuid.into(),
            name: name.into(),
            options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            external_ids: ext.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    /// p1: untagged, pinned to hv1. p2: migrating hv3 → hv4 with the proxy's options.
    fn view() -> StaticView {
        StaticView::new(vec![
            lsp(U1, "p1", &[("requested-chassis", "hv1")], &[("pod", "ns/vm1")]),
            lsp(
                U2,
                "p2",
                &[("requested-chassis", "hv3,hv4"), ("activation-strategy", "rarp")],
                &[("pod", "ns/vm2"), ("migration-destination", "hv4")],
            ),
        ])
    }

    fn tag(where_: Value) -> Value {
        json!({"op": "mutate", "table": "Logical_Switch_Port", "where": where_,
               "mutations": [["external_ids", "insert", ["map", [["migration-destination", "hv2"]]]]]})
    }

    struct Want {
        appended: usize,
        changes: &'static [(&'static str, Cause)],
        skips: &'static [(&'static str, SkipReason)],
        unhandled: bool,
    }

    const NOTHING: Want = Want { appended: 0, changes: &[], skips: &[], unhandled: false };
    const UNHANDLED: Want = Want { appended: 0, changes: &[], skips: &[], unhandled: true };
    /// The tagged port `p1` a transaction inserted cannot be addressed after it: left alone.
    const SKIP_NEW_P1: Want =
        Want { appended: 0, changes: &[], skips: &[("p1", SkipReason::UnresolvedWhere)], unhandled: false };

    #[test]
    fn a_scan_of_a_big_table_is_planned_elsewhere() {
        let cfg = PolicyConfig::default();
        let all = json!(["OVN_Northbound", tag(json!([]))]);
        let by_name = json!(["OVN_Northbound", tag(json!([["name", "==", "p1"]]))]);
        // The view has 2 ports: a scan within the bound is planned here, past it not.
        assert!(plan_transact_within(&all, &view(), &cfg, 2).is_some());
        assert_eq!(plan_transact_within(&all, &view(), &cfg, 1), None);
        // A where that names its row needs no scan, whatever the bound.
        let plan = plan_transact_within(&by_name, &view(), &cfg, 0).expect("planned");
        assert_eq!(plan.changes.len(), 1);
    }

    #[test]
    fn shapes() {
        let cases: Vec<(&str, Value, Want)> = vec![
            ("not an array", json!({"a": 1}), NOTHING),
            ("no ops", json!(["OVN_Northbound"]), NOTHING),
            ("other db", json!(["OVN_Southbound", tag(json!([]))]), NOTHING),
            (
                "tag by name",
                json!(["OVN_Northbound", tag(json!([["name", "==", "p1"]]))]),
                Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
            ),
            (
                "name as a 1-element set",
                json!(["OVN_Northbound", tag(json!([["name", "==", ["set", ["p1"]]]]))]),
                Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
            ),
            (
                "name includes",
                json!(["OVN_Northbound", tag(json!([["name", "includes", "p1"]]))]),
                Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
            ),
            (
                "name != p2 matches p1 only",
                json!(["OVN_Northbound", tag(json!([["name", "!=", "p2"]]))]),
                Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
            ),
            (
                "uuid excludes",
                json!(["OVN_Northbound", tag(json!([["_uuid", "excludes", ["uuid", U2]]]))]),
                Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
            ),
            (
                "map ==",
                json!(["OVN_Northbound", tag(json!([["external_ids", "==", ["map", [["pod", "ns/vm1"]]]]]))]),
                Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
            ),
            (
                "map != (p2 would need no change)",
                json!(["OVN_Northbound", tag(json!([["options", "!=", ["map", []]]]))]),
                Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
            ),
            (
                "map excludes",
                json!([
                    "OVN_Northbound",
                    tag(json!([["external_ids", "excludes", ["map", [["pod", "ns/vm2"]]]]]))
                ]),
                Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
            ),
            (
                "includes needs the value too",
                json!([
                    "OVN_Northbound",
                    tag(json!([["external_ids", "includes", ["map", [["pod", "ns/vm9"]]]]]))
                ]),
                NOTHING,
            ),
            ("false matches nothing", json!(["OVN_Northbound", tag(json!([false]))]), NOTHING),
            (
                "no such uuid",
                json!(["OVN_Northbound", tag(json!([["_uuid", "==", ["uuid", "0000"]]]))]),
                NOTHING,
            ),
            (
                "all rows; insert does not overwrite p2's destination",
                json!(["OVN_Northbound", tag(json!([]))]),
                Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
            ),
            (
                "clear options of all rows",
                json!(["OVN_Northbound",
                    {"op": "update", "table": "Logical_Switch_Port", "where": [true], "row": {"options": ["map", []]}}]),
                Want { appended: 1, changes: &[("p2", Cause::Reasserted)], ..NOTHING },
            ),
            (
                "delete by map with a wrong value is a no-op",
                json!(["OVN_Northbound",
                    {"op": "mutate", "table": "Logical_Switch_Port", "where": [["_uuid", "==", ["uuid", U2]]],
                     "mutations": [["external_ids", "delete", ["map", [["migration-destination", "hv9"]]]]]}]),
                NOTHING,
            ),
            (
                "delete by key aborts",
                json!(["OVN_Northbound",
                    {"op": "mutate", "table": "Logical_Switch_Port", "where": [["_uuid", "==", ["uuid", U2]]],
                     "mutations": [["external_ids", "delete", ["set", ["migration-destination"]]]]}]),
                Want { appended: 1, changes: &[("p2", Cause::Aborted)], ..NOTHING },
            ),
            (
                "rename then tag by the new name",
                json!(["OVN_Northbound",
                    {"op": "update", "table": "Logical_Switch_Port", "where": [["name", "==", "p1"]], "row": {"name": "p1-new"}},
                    tag(json!([["name", "==", "p1-new"]]))]),
                Want { appended: 1, changes: &[("p1-new", Cause::Started)], ..NOTHING },
            ),
            (
                "the old name no longer matches",
                json!(["OVN_Northbound",
                    {"op": "update", "table": "Logical_Switch_Port", "where": [["name", "==", "p1"]], "row": {"name": "p1-new"}},
                    tag(json!([["name", "==", "p1"]]))]),
                NOTHING,
            ),
            (
                "insert without uuid-name, tagged later by name",
                json!(["OVN_Northbound",
                    {"op": "insert", "table": "Logical_Switch_Port", "row": {"name": "p9", "options": ["map", [["requested-chassis", "hv1"]]]}},
                    tag(json!([["name", "==", "p9"]]))]),
                Want { appended: 1, changes: &[("p9", Cause::Started)], ..NOTHING },
            ),
            (
                "insert without uuid-name whose name ends up on every port: not addressed by name",
                json!(["OVN_Northbound",
                    {"op": "insert", "table": "Logical_Switch_Port",
                     "row": {"external_ids": ["map", [["migration-destination", "hv2"]]], "options": ["map", [["requested-chassis", "hv1"]]]}},
                    {"op": "update", "table": "Logical_Switch_Port", "where": [],
                     "row": {"name": "p9", "options": ["map", [["requested-chassis", "hv1"]]]}}]),
                // p2 (renamed p9 too) gets its options back by uuid; the new row is left alone.
                Want {
                    appended: 1,
                    changes: &[("p9", Cause::Reasserted)],
                    skips: &[("p9", SkipReason::UnresolvedWhere)],
                    ..NOTHING
                },
            ),
            (
                "insert without uuid-name under a name a touched port has: not addressed by name",
                json!(["OVN_Northbound",
                    {"op": "insert", "table": "Logical_Switch_Port",
                     "row": {"name": "p1", "external_ids": ["map", [["migration-destination", "hv2"]]], "options": ["map", [["requested-chassis", "hv1"]]]}},
                    {"op": "mutate", "table": "Logical_Switch_Port", "where": [["name", "==", "p1"]],
                     "mutations": [["external_ids", "insert", ["map", [["x", "y"]]]]]}]),
                SKIP_NEW_P1,
            ),
            (
                "insert without uuid-name under a name an untouched port has: not addressed by name",
                json!(["OVN_Northbound",
                    {"op": "insert", "table": "Logical_Switch_Port",
                     "row": {"name": "p1", "external_ids": ["map", [["migration-destination", "hv2"]]], "options": ["map", [["requested-chassis", "hv1"]]]}},
                    {"op": "mutate", "table": "Logical_Switch_Port", "where": [["_uuid", "!=", ["uuid", U1]]],
                     "mutations": [["external_ids", "insert", ["map", [["x", "y"]]]]]}]),
                SKIP_NEW_P1,
            ),
            (
                "unresolved write of another column is ignored",
                json!(["OVN_Northbound",
                    {"op": "update", "table": "Logical_Switch_Port", "where": [["up", "==", true]], "row": {"enabled": false}},
                    tag(json!([["_uuid", "==", ["uuid", U1]]]))]),
                Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
            ),
            (
                "unresolved tagging op: every tagged candidate skipped",
                json!(["OVN_Northbound", tag(json!([["type", "==", ""]]))]),
                Want {
                    skips: &[("p1", SkipReason::UnresolvedWhere), ("p2", SkipReason::UnresolvedWhere)],
                    ..NOTHING
                },
            ),
            (
                "after an unresolved write, no in-place edit",
                json!(["OVN_Northbound",
                    {"op": "mutate", "table": "Logical_Switch_Port", "where": [["type", "==", "router"]],
                     "mutations": [["external_ids", "insert", ["map", [["x", "y"]]]]]},
                    {"op": "update", "table": "Logical_Switch_Port", "where": [["name", "==", "p3"]], "row": {"options": ["map", []]}},
                    {"op": "insert", "table": "Logical_Switch_Port", "uuid-name": "n3",
                     "row": {"name": "p3", "external_ids": ["map", [["migration-destination", "hv2"]]], "options": ["map", [["requested-chassis", "hv1"]]]}},
                    {"op": "update", "table": "Logical_Switch_Port", "where": [["_uuid", "==", ["named-uuid", "n3"]]], "row": {"options": ["map", [["a", "b"], ["requested-chassis", "hv1"]]]}}]),
                Want {
                    appended: 1,
                    changes: &[("p3", Cause::Started)],
                    skips: &[("p2", SkipReason::UnresolvedWhere)],
                    ..NOTHING
                },
            ),
            (
                "mutator += on options",
                json!(["OVN_Northbound",
                    {"op": "mutate", "table": "Logical_Switch_Port", "where": [], "mutations": [["options", "+=", 1]]}]),
                UNHANDLED,
            ),
            (
                "non-string map value",
                json!(["OVN_Northbound",
                    {"op": "update", "table": "Logical_Switch_Port", "where": [], "row": {"options": ["map", [["a", 1]]]}}]),
                UNHANDLED,
            ),
            (
                "missing where",
                json!(["OVN_Northbound",
                    {"op": "update", "table": "Logical_Switch_Port", "row": {"external_ids": ["map", []]}}]),
                UNHANDLED,
            ),
            ("bad condition", json!(["OVN_Northbound", tag(json!([["name", "<", "p1"]]))]), UNHANDLED),
            ("bare uuid string", json!(["OVN_Northbound", tag(json!([["_uuid", "==", U1]]))]), UNHANDLED),
            (
                "unknown named-uuid",
                json!(["OVN_Northbound", tag(json!([["_uuid", "==", ["named-uuid", "nope"]]]))]),
                UNHANDLED,
            ),
            (
                "duplicate uuid-name",
                json!(["OVN_Northbound",
                    {"op": "insert", "table": "Logical_Switch", "uuid-name": "a", "row": {}},
                    {"op": "insert", "table": "Logical_Switch_Port", "uuid-name": "a", "row": {}}]),
                UNHANDLED,
            ),
            ("op not an object", json!(["OVN_Northbound", 1]), UNHANDLED),
            ("no table", json!(["OVN_Northbound", {"op": "update", "where": [], "row": {}}]), UNHANDLED),
            (
                "named-uuid of another table matches nothing",
                json!(["OVN_Northbound",
                    {"op": "insert", "table": "Logical_Switch", "uuid-name": "ls", "row": {}},
                    tag(json!([["_uuid", "==", ["named-uuid", "ls"]]]))]),
                NOTHING,
            ),
        ];
        let cfg = PolicyConfig::default();
        let view = view();
        for (name, params, want) in cases {
            let plan = plan_transact(&params, &view, &cfg);
            let n = params.as_array().map_or(0, |a| a.len().saturating_sub(1));
            assert_eq!(plan.client_ops, n, "{name}: client_ops");
            assert_eq!(plan.upstream_ops, n + want.appended, "{name}: upstream_ops {plan:?}");
            let changes: Vec<(&str, Cause)> =
                plan.changes.iter().map(|c| (c.port.as_str(), c.cause)).collect();
            assert_eq!(changes, want.changes, "{name}: changes");
            let skips: Vec<(&str, SkipReason)> =
                plan.skips.iter().map(|s| (s.port.as_str(), s.reason)).collect();
            assert_eq!(skips, want.skips, "{name}: skips");
            assert_eq!(plan.unhandled.is_some(), want.unhandled, "{name}: unhandled {:?}", plan.unhandled);
            assert_eq!(plan.rewritten.is_some(), !plan.changes.is_empty(), "{name}: rewritten");
            // Read from the ops' text, only what can matter parsed: the same plan.
            let text = serde_json::to_string_pretty(&params).expect("json");
            let all: Vec<&RawValue> = serde_json::from_str(&text).unwrap_or_default();
            if let (Some((db, ops)), false) = (all.split_first(), want.unhandled) {
                let raw = plan_transact_raw(db, ops, &view, &cfg, usize::MAX).expect("planned here");
                assert_eq!(raw, plan, "{name}: planned from the text");
                if let Some(r) = &plan.rewritten {
                    let spliced: Value =
                        serde_json::from_slice(&r.splice(db.get(), ops).expect("splice")).expect("json");
                    assert_eq!(Some(spliced), plan.params_after(&params), "{name}: spliced");
                }
            }
        }
    }

    #[test]
    fn the_appended_text_is_the_op_mutate_op_builds() {
        let both = |rc: &str, s: Option<&str>| Opts {
            requested_chassis: Some(rc.into()),
            activation_strategy: s.map(Into::into),
        };
        for opts in [both("hv1,hv2", Some("rarp")), both("a\"b\\c", None), Opts::default()] {
            let where_ = json!([
                ["_uuid", "==", ["uuid", U1]],
                ["external_ids", "==", ["map", [["k", "v\u{e9}\u{1}"]]]]
            ]);
            let text = fix_text(|t| t.value(&where_), &opts);
            let op: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(op, super::super::decide::mutate_op(where_, &opts), "{text}");
        }
    }

    #[test]
    fn a_bulk_insert_no_op_tags_is_read_no_further_than_its_head() {
        let cfg = PolicyConfig::default();
        let view = view();
        let insert = |i: usize| {
            json!({"op": "insert", "table": "Logical_Switch_Port", "uuid-name": format!("n{i}"),
            // not a row the policy could read: it must not need to
            "row": {"name": format!("new{i}"), "options": ["map", [["requested-chassis", 7]]]}})
        };
        let mut ops: Vec<Value> = (0..1000).map(insert).collect();
        ops.push(json!({"op": "insert", "table": "Logical_Switch", "row": {"name": "sw9",
            "ports": ["set", (0..1000).map(|i| json!(["named-uuid", format!("n{i}")])).collect::<Vec<_>>()]}}));
        let text = serde_json::to_string(&ops).expect("json");
        let ops_raw: Vec<&RawValue> = serde_json::from_str(&text).expect("array");
        let db = RawValue::from_string("\"OVN_Northbound\"".into()).expect("db");
        let plan = plan_transact_raw(&db, &ops_raw, &view, &cfg, usize::MAX).expect("planned");
        assert_eq!((plan.unhandled, plan.rewritten.is_some(), plan.changes.len()), (None, false, 0));
        // The same inserts in a transaction that tags a port: every op is read.
        let mut tagging = ops.clone();
        tagging.push(tag(json!([["_uuid", "==", ["named-uuid", "n3"]]])));
        let text = serde_json::to_string(&tagging).expect("json");
        let ops_raw: Vec<&RawValue> = serde_json::from_str(&text).expect("array");
        let plan = plan_transact_raw(&db, &ops_raw, &view, &cfg, usize::MAX).expect("planned");
        assert_eq!(plan.unhandled.map(|u| u.op), Some(Some(0)), "the unreadable row is found now");
        // An edited op is spliced in; every other op keeps its bytes, whitespace and all.
        let spaced = format!(
            "[ {} , {{\"op\": \"comment\",  \"comment\": \"x\"}} ]",
            serde_json::to_string(&json!({
            "op": "insert", "table": "Logical_Switch_Port",
            "row": {"name": "p7", "external_ids": ["map", [["migration-destination", "hv2"]]],
                    "options": ["map", [["requested-chassis", "hv1"]]]}}))
            .expect("json")
        );
        let ops_raw: Vec<&RawValue> = serde_json::from_str(&spaced).expect("array");
        let plan = plan_transact_raw(&db, &ops_raw, &view, &cfg, usize::MAX).expect("planned");
        let r = plan.rewritten.as_ref().expect("rewritten in place");
        assert_eq!(r.edited.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![0]);
        let out = String::from_utf8(r.splice(db.get(), &ops_raw).expect("splice")).expect("utf8");
        assert!(out.ends_with(",{\"op\": \"comment\",  \"comment\": \"x\"}]"), "{out}");
        assert!(out.contains("hv1,hv2"), "{out}");
    }

    #[test]
    fn appended_where_for_unnamed_insert_uses_the_name() {
        let params = json!(["OVN_Northbound",
            {"op": "insert", "table": "Logical_Switch_Port", "row": {"name": "p9", "options": ["map", [["requested-chassis", "hv1"]]]}},
            tag(json!([["name", "==", "p9"]]))]);
        let plan = plan_transact(&params, &view(), &PolicyConfig::default());
        let appended: Value = plan
            .rewritten
            .as_ref()
            .and_then(|r| r.appended.first())
            .and_then(|t| serde_json::from_str(t).ok())
            .expect("one appended op");
        assert_eq!(appended["where"], json!([["name", "==", "p9"]]));
    }
}
