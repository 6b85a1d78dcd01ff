//! Messages as compared: uuids recognised, unordered collections marked, the columns and values
//! that differ between two databases by nature left out; and the signature that pairs unordered
//! elements by content.

use serde_json::Value;

use super::uuids::{is_uuid, UuidMap};

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

/// A message as compared: uuids recognised, unordered collections marked, ignored columns gone.
#[derive(Debug)]
pub(super) enum Norm<'a> {
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

pub(super) fn key_segment(k: &str) -> String {
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
pub(super) fn normalise_message<'a>(msg: &'a Value, op_tables: &[Option<&'a str>]) -> Norm<'a> {
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

/// Which message a value is from: the side of the pairing its uuids are looked up on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Recorded,
    Live,
}

/// A canonical text of `n` for pairing unordered elements: members sorted, bags sorted, paired
/// uuids written as their live uuid, unpaired ones as `U?`.
pub(super) fn signature(n: &Norm, side: Side, map: &UuidMap) -> String {
    let mut out = String::new();
    sig_into(n, side, map, &mut out);
    out
}

fn sig_uuid(u: &str, side: Side, map: &UuidMap, out: &mut String) {
    let paired = match side {
        Side::Recorded => map.live(u),
        Side::Live => map.is_paired_live(u).then_some(u),
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
