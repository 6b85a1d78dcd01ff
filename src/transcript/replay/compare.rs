//! Comparing a live message with the recorded one: uuid pairs learnt on the way, unordered
//! elements paired by content, and the differences found, a bounded number of them.

use std::collections::HashMap;

use serde_json::Value;

use super::normalise::{blank_volatile, key_segment, normalise_message, signature, Norm, Side};
use super::report::abridge;
use super::uuids::UuidMap;

/// Differences reported per mismatching message.
const DIFFS_PER_MISMATCH: usize = 5;
/// Learning passes over one message before the final comparison (each pass can only add pairs).
const LEARNING_PASSES: usize = 8;

fn render(n: &Norm) -> String {
    abridge(match n {
        Norm::Scalar(v) | Norm::Uuid(_, v) | Norm::Obj(v, _) | Norm::List(v, _) | Norm::Bag(v, _) => {
            v.to_string()
        }
        Norm::Entry(k, row) => format!("{{{}:{}}}", Value::String(k.to_string()), render(row)),
    })
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

pub(super) const ABSENT: &str = "(absent)";

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

    /// Pairs unordered elements by content: certain pairs first, then (final pass) look-alikes.
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
        self.leftovers(ra, la, &rest_r, &rest_l, path);
    }

    /// What is left of a bag differs: pairs the leftovers in signature order to show how.
    fn leftovers(
        &mut self,
        ra: &[(String, Norm)],
        la: &[(String, Norm)],
        rest_r: &[usize],
        rest_l: &[usize],
        path: &mut Vec<String>,
    ) {
        let by_sig = |rest: &[usize], items: &[(String, Norm)], side: Side, map: &UuidMap| {
            let mut v: Vec<(String, usize)> =
                rest.iter().map(|&i| (signature(&items[i].1, side, map), i)).collect();
            v.sort();
            v.into_iter().map(|(_, i)| i).collect::<Vec<_>>()
        };
        let rest_r = by_sig(rest_r, ra, Side::Recorded, self.map);
        let rest_l = by_sig(rest_l, la, Side::Live, self.map);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::replay::testing::*;

    fn paths(diffs: &[Diff]) -> Vec<&str> {
        diffs.iter().map(|d| d.path.as_str()).collect()
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
}
