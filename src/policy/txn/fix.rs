//! The rewrite's output: the text of an appended fix (a conditional `mutate` of the two keys)
//! and the in-place edits of a client's op.

use serde_json::{json, Value};

use super::sim::{names_one_row, Sim, Work};
use crate::policy::decide::{option_mutations, where_uuid};
use crate::policy::value::{map_json, map_pairs, StrMap, UuidRef};
use crate::policy::{LspView, Opts, ACTIVATION_STRATEGY, LSP_TABLE, REQUESTED_CHASSIS};

/// JSON text written directly: a bulk transaction appends thousands of fixes, and building a
/// `Value` for each cost more than planning them.
pub(super) struct Text(Vec<u8>);

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

    pub(super) fn value(&mut self, v: &Value) {
        let _ = serde_json::to_writer(&mut self.0, v);
    }
}

fn pairs(m: &StrMap) -> impl Iterator<Item = (&str, &str)> {
    m.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// The text of an appended `mutate` that makes one row's two keys `opts`; `where_` writes its
/// `where`. The same op as [`mutate_op`] builds.
pub(super) fn fix_text(where_: impl FnOnce(&mut Text), opts: &Opts) -> String {
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
pub(super) fn edit_row_options(op: &mut Value, opts: &Opts) {
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
pub(super) fn edit_mutations(op: &mut Value, opts: &Opts) {
    if let Some(list) = op.get_mut("mutations").and_then(Value::as_array_mut) {
        list.extend(option_mutations(opts));
    }
}

/// The text of the `mutate` appended to give the working row `w` the two keys `opts`, its
/// `where` addressing the row as the transaction leaves it (`None`: no `where` addresses that
/// row alone).
pub(super) fn appended_fix(w: &Work, sim: &Sim, view: &dyn LspView, opts: &Opts) -> Option<String> {
    Some(match (&w.pre, &w.named, w.cur.uuid.is_empty()) {
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
                    Some(rc) => t.raw(r#"["options","includes","#).map([(REQUESTED_CHASSIS, rc.as_str())]),
                    None => t.raw(r#"["options","==","#).map(pairs(&w.cur.options)),
                };
                t.raw(r#"],["external_ids","==","#).map(pairs(&w.cur.external_ids)).raw("]]");
            },
            opts,
        ),
        (None, Some(named), _) => fix_text(|t| t.value(&where_uuid(&UuidRef::Named(named.clone()))), opts),
        (None, None, false) => fix_text(|t| t.value(&where_uuid(&UuidRef::Uuid(w.cur.uuid.clone()))), opts),
        // A row inserted without a uuid-name: by its name, if that names it alone. Names
        // are indexed, so a transaction leaving two ports with one name fails anyway;
        // a `where` matching several rows would change them all.
        (None, None, true) if !w.cur.name.is_empty() && names_one_row(sim, view, &w.cur.name) => {
            fix_text(|t| t.value(&json!([["name", "==", w.cur.name]])), opts)
        }
        (None, None, true) => return None,
    })
}
