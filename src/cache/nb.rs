//! The proxy's own view of `Logical_Switch_Port` (`name`, `options`, `external_ids`), fed by a
//! `monitor_cond` on a connection of its own. Pure: it applies `<table-updates2>` text it is
//! given; the connection lives in `proxy::monitor`.
//!
//! It supplies the state a transaction does not carry (the pre-state of the ports it touches).
//! It may lag the database by one monitor round trip; the reconciler covers that window.
//!
//! Every port of the database lives here, so rows are stored compactly (a uuid in 16 bytes,
//! maps as sorted boxed pairs) and updates are decoded straight into them, without an
//! intermediate JSON tree: at 100 000 ports a `serde_json::Value` of the initial monitor reply
//! alone is ~18 times the size of its text. Readers get owned `LspState`s, built on demand.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::policy::value::StrMap;
use crate::policy::{LspState, LspView};

/// The columns the monitor asks for.
pub const COLUMNS: [&str; 3] = ["name", "options", "external_ids"];

/// A row uuid in its 128 bits. OVSDB writes uuids as 8-4-4-4-12 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uuid(u128);

impl Uuid {
    pub fn parse(s: &str) -> Option<Uuid> {
        let b = s.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return None;
        }
        let mut n: u128 = 0;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                continue;
            }
            n = n << 4 | (c as char).to_digit(16)? as u128;
        }
        Some(Uuid(n))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let h = format!("{:032x}", self.0);
        write!(f, "{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    }
}

/// A string map as sorted, boxed pairs: a third of a `BTreeMap`'s size for the few keys a port has.
type Pairs = Box<[(Box<str>, Box<str>)]>;

/// One cached port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    name: Box<str>,
    options: Pairs,
    external_ids: Pairs,
}

impl Row {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value of `key` in `external_ids` (a binary search: pairs are sorted).
    pub fn external_id(&self, key: &str) -> Option<&str> {
        let i = self.external_ids.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.external_ids[i].1)
    }

    /// Whether `external_ids:key` is present and not blank (a migration's destination tag).
    pub fn has_tag(&self, key: &str) -> bool {
        self.external_id(key).is_some_and(|v| !v.trim().is_empty())
    }

    pub fn state(&self, uuid: Uuid) -> LspState {
        let map = |p: &Pairs| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<StrMap>();
        LspState {
            uuid: uuid.to_string(),
            name: self.name.to_string(),
            options: map(&self.options),
            external_ids: map(&self.external_ids),
        }
    }

    /// Sets the columns present in `cols`. With `diff`, maps are update2 diffs: a pair whose
    /// key holds the same value is a removal, any other pair is an addition or a change.
    fn apply(&mut self, cols: Cols, diff: bool) {
        if let Some(name) = cols.name {
            self.name = name;
        }
        for (new, target) in [(cols.options, &mut self.options), (cols.external_ids, &mut self.external_ids)]
        {
            let Some(new) = new else { continue };
            *target = if diff { apply_diff(target, new.0) } else { sorted(new.0) };
        }
    }
}

/// The server sends no duplicate key; should one come, the last wins, as in a map.
fn sorted(pairs: Vec<(Box<str>, Box<str>)>) -> Pairs {
    pairs.into_iter().collect::<BTreeMap<_, _>>().into_iter().collect()
}

fn apply_diff(old: &Pairs, diff: Vec<(Box<str>, Box<str>)>) -> Pairs {
    let mut map: BTreeMap<Box<str>, Box<str>> = old.iter().cloned().collect();
    for (k, v) in diff {
        if map.get(&k) == Some(&v) {
            map.remove(&k);
        } else {
            map.insert(k, v);
        }
    }
    map.into_iter().collect()
}

/// One row a monitor update touched: as it was (`None`: new) and as it is (`None`: deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub uuid: Uuid,
    pub before: Option<Arc<Row>>,
    pub after: Option<Arc<Row>>,
}

impl Touched {
    pub fn before_state(&self) -> Option<LspState> {
        self.before.as_ref().map(|r| r.state(self.uuid))
    }

    pub fn after_state(&self) -> Option<LspState> {
        self.after.as_ref().map(|r| r.state(self.uuid))
    }
}

/// An update the monitor connection could not read (it then resynchronises).
#[derive(Debug, thiserror::Error)]
#[error("unreadable Logical_Switch_Port update: {0}")]
pub struct BadUpdate(#[from] serde_json::Error);

#[derive(Debug)]
pub struct LspCache {
    rows: DashMap<Uuid, Arc<Row>>,
    /// name → uuid. Names are unique in the NB schema (an index), so one uuid per name.
    names: DashMap<Box<str>, Uuid>,
    synced: AtomicBool,
    /// The destination tag key the rows are counted by (`track`), and how many carry it:
    /// `UNCOUNTED` while a count is made. Rows are only written by one thread (the monitor), so
    /// the count is raised before a row gains the tag and lowered after it loses it: a reader
    /// never sees fewer tagged rows than there are.
    tag_key: RwLock<Arc<str>>,
    tagged: AtomicUsize,
}

const UNCOUNTED: usize = usize::MAX / 2;

impl Default for LspCache {
    fn default() -> Self {
        LspCache {
            rows: DashMap::new(),
            names: DashMap::new(),
            synced: AtomicBool::new(false),
            tag_key: RwLock::new(Arc::from("")),
            tagged: AtomicUsize::new(UNCOUNTED),
        }
    }
}

impl LspCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn counted_key(&self) -> Arc<str> {
        self.tag_key.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts the rows tagged with `key` from now on (the destination tag key of the policy in
    /// force); a walk of the table when the key changed, else nothing. Called by the writer of
    /// the rows (the monitor), before it applies updates and when the policy is reloaded.
    pub fn track(&self, key: &str) {
        if *self.counted_key() == *key {
            return;
        }
        self.tagged.store(UNCOUNTED, Ordering::SeqCst);
        *self.tag_key.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(key);
        let n = self.rows.iter().filter(|r| r.has_tag(key)).count();
        self.tagged.store(n, Ordering::SeqCst);
    }

    /// True when the cache is synchronised, counts its rows by `key`, and none of them carries
    /// it: no port is migrating (the sessions' fast path).
    pub fn none_tagged(&self, key: &str) -> bool {
        let counted = self.tag_key.read().unwrap_or_else(|e| e.into_inner());
        self.is_synced() && **counted == *key && self.tagged.load(Ordering::SeqCst) == 0
    }

    /// How many rows carry the counted tag key (`None` while uncounted).
    pub fn tagged_count(&self) -> Option<usize> {
        Some(self.tagged.load(Ordering::SeqCst)).filter(|&n| n < UNCOUNTED)
    }

    /// True between a complete initial monitor reply and the loss of the monitor connection.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn set_unsynced(&self) {
        self.synced.store(false, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Replaces the whole content with a monitor reply's initial rows (`<table-updates2>` text).
    pub fn reset(&self, initial: &str) -> Result<Vec<Touched>, BadUpdate> {
        let updates: TableUpdates = serde_json::from_str(initial)?;
        self.tagged.store(UNCOUNTED, Ordering::SeqCst);
        self.rows.clear();
        self.names.clear();
        let touched = self.apply_parsed(updates);
        let key = self.counted_key();
        let n = touched.iter().filter(|t| t.after.as_ref().is_some_and(|r| r.has_tag(&key))).count();
        self.tagged.store(n, Ordering::SeqCst);
        self.synced.store(true, Ordering::Release);
        Ok(touched)
    }

    /// Applies `<table-updates2>` text (`initial`/`insert` rows, `modify` diffs, `delete`) and
    /// says what each touched row was before and is now. Rows of other tables are skipped; an
    /// update that is not `<table-updates2>` changes nothing and is an error.
    pub fn apply(&self, updates: &str) -> Result<Vec<Touched>, BadUpdate> {
        Ok(self.apply_parsed(serde_json::from_str(updates)?))
    }

    fn apply_parsed(&self, updates: TableUpdates) -> Vec<Touched> {
        let mut touched = Vec::with_capacity(updates.lsp.0.len());
        let key = self.counted_key();
        let was_tagged = |r: &Option<Arc<Row>>| r.as_ref().is_some_and(|r| r.has_tag(&key));
        for (uuid, change) in updates.lsp.0 {
            let before = self.rows.get(&uuid).map(|r| Arc::clone(&r));
            let after = if let Some(cols) = change.initial.or(change.insert) {
                let mut row = Row::default();
                row.apply(cols, false);
                Some(self.put_counted(uuid, before.as_deref(), row, &key))
            } else if let Some(cols) = change.modify {
                let Some(old) = before.as_deref() else { continue };
                let mut row = old.clone();
                row.apply(cols, true);
                Some(self.put_counted(uuid, Some(old), row, &key))
            } else if change.delete {
                if let Some((_, old)) = self.rows.remove(&uuid) {
                    self.names.remove_if(&old.name, |_, u| *u == uuid);
                }
                None
            } else {
                continue;
            };
            if was_tagged(&before) && !was_tagged(&after) {
                self.tagged.fetch_sub(1, Ordering::SeqCst);
            }
            touched.push(Touched { uuid, before, after });
        }
        touched
    }

    /// `put`, the tag count raised first when the row gains the tag.
    fn put_counted(&self, uuid: Uuid, old: Option<&Row>, row: Row, key: &str) -> Arc<Row> {
        if row.has_tag(key) && !old.is_some_and(|o| o.has_tag(key)) {
            self.tagged.fetch_add(1, Ordering::SeqCst);
        }
        self.put(uuid, old, row)
    }

    fn put(&self, uuid: Uuid, old: Option<&Row>, row: Row) -> Arc<Row> {
        if let Some(old) = old.filter(|o| o.name != row.name) {
            self.names.remove_if(&old.name, |_, u| *u == uuid);
        }
        if old.is_none_or(|o| o.name != row.name) {
            self.names.insert(row.name.clone(), uuid);
        }
        let row = Arc::new(row);
        self.rows.insert(uuid, Arc::clone(&row));
        row
    }

    /// The uuids of every row whose `external_ids:key` is set (to look at each in turn without
    /// holding a copy of the table).
    pub fn tagged(&self, key: &str) -> Vec<Uuid> {
        self.rows.iter().filter(|r| r.has_tag(key)).map(|r| *r.key()).collect()
    }

    /// The row as the cache holds it now (shared, not copied).
    pub fn row(&self, uuid: Uuid) -> Option<Arc<Row>> {
        self.rows.get(&uuid).map(|r| Arc::clone(&r))
    }

    /// The uuid of the port called `name`.
    pub fn uuid_of(&self, name: &str) -> Option<Uuid> {
        self.names.get(name).map(|u| *u)
    }

    pub fn state(&self, uuid: Uuid) -> Option<LspState> {
        self.rows.get(&uuid).map(|r| r.state(uuid))
    }
}

impl crate::policy::Memory for LspCache {}

impl LspView for LspCache {
    fn by_uuid(&self, uuid: &str) -> Option<LspState> {
        self.state(Uuid::parse(uuid)?)
    }

    fn by_name(&self, name: &str) -> Option<LspState> {
        let uuid = *self.names.get(name)?;
        self.state(uuid)
    }

    fn all(&self) -> Vec<LspState> {
        self.rows.iter().map(|r| r.state(*r.key())).collect()
    }
    fn size(&self) -> usize {
        self.rows.len()
    }
}

// ---------------------------------------------------------------------------------------------
// `<table-updates2>` for the one table, decoded straight into rows.

/// A `<table-updates2>` object: the `Logical_Switch_Port` member (the only table the monitor
/// asks for); other members are skipped.
#[derive(Deserialize)]
struct TableUpdates {
    #[serde(rename = "Logical_Switch_Port", default)]
    lsp: LspRows,
}

#[derive(Deserialize)]
struct RowUpdate {
    initial: Option<Cols>,
    insert: Option<Cols>,
    modify: Option<Cols>,
    #[serde(default, deserialize_with = "present")]
    delete: bool,
}

#[derive(Deserialize)]
struct Cols {
    name: Option<Box<str>>,
    options: Option<StrPairs>,
    external_ids: Option<StrPairs>,
}

/// `delete` carries `null`: what counts is that the member is there.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d)?;
    Ok(true)
}

/// `["map", [[k, v], ...]]` with string keys and values.
struct StrPairs(Vec<(Box<str>, Box<str>)>);

impl<'de> Deserialize<'de> for StrPairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrPairs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("[\"map\", [[string, string], ...]]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<StrPairs, A::Error> {
                let tag: std::borrow::Cow<'de, str> =
                    s.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                if tag != "map" {
                    return Err(de::Error::invalid_value(de::Unexpected::Str(&tag), &self));
                }
                let pairs = s.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if s.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(StrPairs(pairs))
            }
        }
        d.deserialize_seq(V)
    }
}

/// `{"<uuid>": <row-update2>, ...}`, in order.
#[derive(Default)]
struct LspRows(Vec<(Uuid, RowUpdate)>);

impl<'de> Deserialize<'de> for LspRows {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Rows;
        impl<'de> Visitor<'de> for Rows {
            type Value = LspRows;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of row updates by uuid")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<LspRows, M::Error> {
                let mut rows = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some(key) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    let uuid = Uuid::parse(&key)
                        .ok_or_else(|| de::Error::invalid_value(de::Unexpected::Str(&key), &"a uuid"))?;
                    rows.push((uuid, m.next_value()?));
                }
                Ok(LspRows(rows))
            }
        }
        d.deserialize_map(Rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const U1: &str = "00000000-0000-4000-8000-000000000001";
    const U2: &str = "00000000-0000-4000-8000-000000000002";
    const U3: &str = "00000000-0000-4000-8000-000000000003";

    #[test]
    fn uuids_round_trip() {
        let u = "7ab3c2d9-0f1e-4a5b-9c8d-e7f6a5b4c3d2";
        assert_eq!(Uuid::parse(u).map(|u| u.to_string()).as_deref(), Some(u));
        assert_eq!(Uuid::parse(&u.to_uppercase()).map(|u| u.to_string()).as_deref(), Some(u));
        for bad in
            ["", "7ab3c2d9", "7ab3c2d9-0f1e-4a5b-9c8d-e7f6a5b4c3dz", "7ab3c2d90f1e-4a5b-9c8d-e7f6a5b4c3d2-"]
        {
            assert_eq!(Uuid::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn initial_then_diffs_then_delete() {
        let cache = LspCache::new();
        cache
            .reset(
                &json!({"Logical_Switch_Port":{
                U1:{"initial":{"name":"p1","options":["map",[["x","1"],["requested-chassis","hv1"]]]}},
                U2:{"initial":{"name":"p2"}}}})
                .to_string(),
            )
            .expect("reset");
        assert!(cache.is_synced());
        assert_eq!(cache.len(), 2);
        let p1 = cache.by_name("p1").expect("p1");
        assert_eq!(p1.uuid, U1);
        assert_eq!(p1.options.get("x").map(String::as_str), Some("1"));
        assert!(p1.external_ids.is_empty());

        // x removed (same value), requested-chassis changed, y added; tags added.
        let touched = cache
            .apply(
                &json!({"Logical_Switch_Port":{U1:{"modify":{
            "options":["map",[["x","1"],["requested-chassis","hv1,hv2"],["y","2"]]],
            "external_ids":["map",[["migration-destination","hv2"]]]}}}})
                .to_string(),
            )
            .expect("apply");
        assert_eq!(touched.len(), 1);
        assert_eq!(touched[0].before_state().map(|r| r.options.len()), Some(2));
        assert_eq!(touched[0].after_state().map(|r| r.uuid), Some(U1.to_string()));
        let p1 = cache.by_uuid(U1).expect("u1");
        assert_eq!(p1.options.get("x"), None);
        assert_eq!(p1.options.get("requested-chassis").map(String::as_str), Some("hv1,hv2"));
        assert_eq!(p1.options.get("y").map(String::as_str), Some("2"));
        assert_eq!(p1.external_ids.get("migration-destination").map(String::as_str), Some("hv2"));

        // rename keeps the name index right
        cache
            .apply(&json!({"Logical_Switch_Port":{U2:{"modify":{"name":"p2b"}}}}).to_string())
            .expect("rename");
        assert!(cache.by_name("p2").is_none());
        assert_eq!(cache.by_name("p2b").expect("renamed").uuid, U2);

        let touched = cache
            .apply(
                &json!({"Logical_Switch_Port":{U1:{"delete":null},U3:{"insert":{"name":"p3"}}}}).to_string(),
            )
            .expect("delete, insert");
        assert!(touched
            .iter()
            .any(|t| t.after.is_none() && t.before.as_ref().is_some_and(|b| b.name() == "p1")));
        assert!(cache.by_uuid(U1).is_none());
        assert!(cache.by_name("p1").is_none());
        assert_eq!(cache.by_name("p3").expect("p3").uuid, U3);
        assert_eq!(cache.all().len(), 2);
    }

    #[test]
    fn tagged_rows_are_counted_by_the_key_in_force() {
        let cache = LspCache::new();
        let key = "migration-destination";
        cache.track(key);
        assert!(!cache.none_tagged(key), "not synchronised yet");
        let ext = |v: &str| json!(["map", [[key, v]]]);
        cache
            .reset(
                &json!({"Logical_Switch_Port":{U1:{"initial":{"name":"p1","external_ids": ext("hv2")}},
                U2:{"initial":{"name":"p2","external_ids": ext(" ")}}}})
                .to_string(),
            )
            .expect("reset");
        assert_eq!(cache.tagged_count(), Some(1), "a blank tag is no tag");
        assert!(!cache.none_tagged(key));
        // The tag removed (an update2 diff with the same value), then another port tagged.
        let modify =
            |u: &str, v: &str| json!({"Logical_Switch_Port":{u:{"modify":{"external_ids": ext(v)}}}});
        cache.apply(&modify(U1, "hv2").to_string()).expect("untag");
        assert!(cache.none_tagged(key));
        assert!(!cache.none_tagged("other-key"), "counted by another key: not known");
        cache.apply(&modify(U2, "hv3").to_string()).expect("tag");
        assert_eq!(cache.tagged_count(), Some(1));
        // Another key: counted again; the row deleted: gone from the count.
        cache.track("other-key");
        assert!(cache.none_tagged("other-key"));
        cache.track(key);
        assert_eq!(cache.tagged_count(), Some(1));
        cache.apply(&json!({"Logical_Switch_Port":{U2:{"delete":null}}}).to_string()).expect("delete");
        assert!(cache.none_tagged(key));
        cache.set_unsynced();
        assert!(!cache.none_tagged(key), "a cache out of sync knows nothing");
    }

    #[test]
    fn reset_forgets_rows_that_are_gone() {
        let cache = LspCache::new();
        cache
            .reset(&json!({"Logical_Switch_Port":{U1:{"initial":{"name":"p1"}}}}).to_string())
            .expect("reset");
        cache.set_unsynced();
        assert!(!cache.is_synced());
        cache
            .reset(&json!({"Logical_Switch_Port":{U2:{"initial":{"name":"p2"}}}}).to_string())
            .expect("reset");
        assert!(cache.by_name("p1").is_none());
        assert!(cache.is_synced());
    }

    #[test]
    fn other_tables_are_skipped_and_garbage_refused_whole() {
        let cache = LspCache::new();
        let touched = cache
            .apply(
                &json!({"Logical_Switch":{"s":{"insert":{"name":"sw", "ports": ["set", []]}}},
            "Logical_Switch_Port":{U1:{"modify":{"name":"nope"}}}})
                .to_string(),
            )
            .expect("apply");
        assert!(touched.is_empty(), "a modify of an unknown row is skipped");
        assert!(cache.is_empty());
        for bad in [
            json!({"Logical_Switch_Port":{U1:5}}),
            json!({"Logical_Switch_Port":{"not-a-uuid":{"insert":{"name":"p"}}}}),
            json!({"Logical_Switch_Port":{U1:{"insert":{"name":"p","options":["set",[]]}}}}),
            json!({"Logical_Switch_Port":{U1:{"insert":{"name":"p","options":["map",[["k",1]]]}}}}),
            json!([1]),
        ] {
            assert!(cache.apply(&bad.to_string()).is_err(), "{bad}");
            assert!(cache.is_empty(), "{bad} changed nothing");
        }
    }

    #[test]
    fn rows_are_compact_and_sorted() {
        let cache = LspCache::new();
        cache
            .reset(
                &json!({"Logical_Switch_Port":{U1:{"initial":{"name":"p1",
                "external_ids":["map",[["b","2"],["a","1"],["c","3"]]]}}}})
                .to_string(),
            )
            .expect("reset");
        let row = cache.rows.get(&Uuid::parse(U1).expect("uuid")).map(|r| Arc::clone(&r)).expect("row");
        let keys: Vec<&str> = row.external_ids.iter().map(|(k, _)| &**k).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        // A compact row: no map nodes, just the pairs.
        assert!(std::mem::size_of::<Row>() <= 48);
    }
}
