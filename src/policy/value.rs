//! OVSDB value notation (RFC 7047 §5.1), only the shapes the policy reads and writes: string maps,
//! string sets (with the bare-atom shorthand for one element), string scalars and uuid atoms.
//!
//! Parsing is strict: anything the server would refuse (a non-string atom in a string map, a
//! duplicate key) is `Malformed`, and the caller forwards the transaction untouched.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// A `map<string,string>` column value, e.g. `options` or `external_ids`.
pub type StrMap = BTreeMap<String, String>;

/// Why a piece of JSON is not a value the policy understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub &'static str);

/// A uuid atom: `["uuid", u]`, or `["named-uuid", n]` for a row inserted in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UuidRef {
    Uuid(String),
    Named(String),
}

impl UuidRef {
    pub fn to_json(&self) -> Value {
        match self {
            UuidRef::Uuid(u) => json!(["uuid", u]),
            UuidRef::Named(n) => json!(["named-uuid", n]),
        }
    }
}

/// `["<tag>", <payload>]`, the shape of every tagged value.
fn tagged<'a>(v: &'a Value, tag: &str) -> Option<&'a Value> {
    match v.as_array().map(Vec::as_slice) {
        Some([Value::String(t), payload]) if t == tag => Some(payload),
        _ => None,
    }
}

/// Whether `v` has the `["map", ...]` tag (a cheap test; the pairs are not checked).
pub fn is_map(v: &Value) -> bool {
    tagged(v, "map").is_some()
}

/// `["map", [[k, v], ...]]` with string keys and values, no duplicate key.
pub fn parse_str_map(v: &Value) -> Result<StrMap, Malformed> {
    let pairs = map_pairs(v)?;
    let mut map = StrMap::new();
    for (k, val) in pairs {
        if map.insert(k.to_owned(), val.to_owned()).is_some() {
            return Err(Malformed("map has a duplicate key"));
        }
    }
    Ok(map)
}

/// The pairs of a string map in their JSON order (for edits that keep the writer's order).
pub fn map_pairs(v: &Value) -> Result<Vec<(&str, &str)>, Malformed> {
    let pairs = tagged(v, "map").and_then(Value::as_array).ok_or(Malformed("expected [\"map\", [...]]"))?;
    pairs
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(k), Value::String(v)]) => Ok((k.as_str(), v.as_str())),
            _ => Err(Malformed("map pair is not [string, string]")),
        })
        .collect()
}

/// A set of strings: `["set", [..]]` or a bare string atom (the 1-element shorthand).
pub fn parse_str_set(v: &Value) -> Result<Vec<String>, Malformed> {
    if let Value::String(s) = v {
        return Ok(vec![s.clone()]);
    }
    let items = tagged(v, "set").and_then(Value::as_array).ok_or(Malformed("expected a string set"))?;
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let s = item.as_str().ok_or(Malformed("set element is not a string"))?;
        if out.iter().any(|o| o == s) {
            return Err(Malformed("set has a duplicate element"));
        }
        out.push(s.to_owned());
    }
    Ok(out)
}

/// A string scalar: a bare string or a 1-element set.
pub fn parse_str_scalar(v: &Value) -> Result<String, Malformed> {
    let mut set = parse_str_set(v)?;
    match set.len() {
        1 => Ok(set.remove(0)),
        _ => Err(Malformed("expected exactly one string")),
    }
}

/// A uuid atom, bare or as a 1-element set.
pub fn parse_uuid(v: &Value) -> Result<UuidRef, Malformed> {
    if let Some(Value::String(u)) = tagged(v, "uuid") {
        return Ok(UuidRef::Uuid(u.clone()));
    }
    if let Some(Value::String(n)) = tagged(v, "named-uuid") {
        return Ok(UuidRef::Named(n.clone()));
    }
    match tagged(v, "set").and_then(Value::as_array).map(Vec::as_slice) {
        Some([one]) => parse_uuid(one),
        _ => Err(Malformed("expected [\"uuid\", ..] or [\"named-uuid\", ..]")),
    }
}

/// Encodes pairs as `["map", [[k, v], ...]]`, in the given order.
pub fn map_json<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Value {
    let pairs: Vec<Value> = pairs.into_iter().map(|(k, v)| json!([k, v])).collect();
    json!(["map", pairs])
}

/// Encodes strings as `["set", [...]]` (never the shorthand, so the output is unambiguous).
pub fn set_json<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    let items: Vec<Value> = items.into_iter().map(|s| json!(s)).collect();
    json!(["set", items])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> StrMap {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn maps() {
        let cases: &[(Value, Result<StrMap, ()>)] = &[
            (json!(["map", []]), Ok(m(&[]))),
            (json!(["map", [["a", "1"], ["b", "2"]]]), Ok(m(&[("a", "1"), ("b", "2")]))),
            (json!(["map", [["a", "1"], ["a", "2"]]]), Err(())),
            (json!(["map", [["a", 1]]]), Err(())),
            (json!(["map", [["a"]]]), Err(())),
            (json!(["set", []]), Err(())),
            (json!({"a": "1"}), Err(())),
            (json!(["map", {}]), Err(())),
            (json!("a"), Err(())),
        ];
        for (input, want) in cases {
            assert_eq!(parse_str_map(input).map_err(|_| ()), *want, "{input}");
        }
        assert!(is_map(&json!(["map", []])));
        assert!(!is_map(&json!(["set", []])) && !is_map(&json!("map")));
    }

    #[test]
    fn sets() {
        let cases: &[(Value, Result<Vec<&str>, ()>)] = &[
            (json!("k"), Ok(vec!["k"])),
            (json!(["set", []]), Ok(vec![])),
            (json!(["set", ["a", "b"]]), Ok(vec!["a", "b"])),
            (json!(["set", ["a", "a"]]), Err(())),
            (json!(["set", [1]]), Err(())),
            (json!(["map", [["a", "b"]]]), Err(())),
            (json!(1), Err(())),
        ];
        for (input, want) in cases {
            let got = parse_str_set(input).map_err(|_| ());
            let want = want.clone().map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(got, want, "{input}");
        }
        assert_eq!(parse_str_scalar(&json!("p1")), Ok("p1".to_string()));
        assert_eq!(parse_str_scalar(&json!(["set", ["p1"]])), Ok("p1".to_string()));
        assert!(parse_str_scalar(&json!(["set", []])).is_err());
        assert!(parse_str_scalar(&json!(["set", ["a", "b"]])).is_err());
    }

    #[test]
    fn uuids() {
        assert_eq!(parse_uuid(&json!(["uuid", "u1"])), Ok(UuidRef::Uuid("u1".into())));
        assert_eq!(parse_uuid(&json!(["named-uuid", "row1"])), Ok(UuidRef::Named("row1".into())));
        assert_eq!(parse_uuid(&json!(["set", [["uuid", "u1"]]])), Ok(UuidRef::Uuid("u1".into())));
        assert!(parse_uuid(&json!("u1")).is_err());
        assert!(parse_uuid(&json!(["uuid", 1])).is_err());
        assert!(parse_uuid(&json!(["set", []])).is_err());
        assert_eq!(UuidRef::Named("r".into()).to_json(), json!(["named-uuid", "r"]));
    }

    #[test]
    fn encoding_round_trips() {
        let v = map_json([("requested-chassis", "hv1,hv2"), ("activation-strategy", "rarp")]);
        assert_eq!(v, json!(["map", [["requested-chassis", "hv1,hv2"], ["activation-strategy", "rarp"]]]));
        assert_eq!(
            parse_str_map(&v),
            Ok(m(&[("requested-chassis", "hv1,hv2"), ("activation-strategy", "rarp")]))
        );
        assert_eq!(set_json(["a"]), json!(["set", ["a"]]));
        assert_eq!(parse_str_set(&set_json(["a", "b"])), Ok(vec!["a".to_string(), "b".to_string()]));
    }
}
