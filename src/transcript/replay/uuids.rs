//! Pairing uuids: a recorded uuid and the live one found in its place, one to one, for the
//! whole replay.

use std::collections::HashMap;

use serde_json::Value;

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

    /// Whether a live uuid is paired with a recorded one.
    pub(super) fn is_paired_live(&self, live: &str) -> bool {
        self.back.contains_key(live)
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

    pub(super) fn checkpoint(&self) -> usize {
        self.journal.len()
    }

    pub(super) fn rollback(&mut self, checkpoint: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::replay::testing::{j, A, U1};

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
}
