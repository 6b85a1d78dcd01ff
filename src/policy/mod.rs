//! The live-migration policy: pure functions, no I/O, no clock, no locks.
//!
//! A `Logical_Switch_Port` whose `external_ids` carry a destination tag is *migrating*; the policy
//! keeps its `options:requested-chassis` and `options:activation-strategy` in step with the tags
//! (see [`desired`]) and never writes any other key. Three entry points:
//! * [`plan_transact`]: a client's `transact` params → a [`Plan`] (forward as is, or rewritten);
//! * [`Trim::apply`]: the server's result array → the array the client expects (when ops were added);
//! * [`plan_reconcile`]: a row seen on the monitor → a conditional fix-up transaction.

mod config;
mod decide;
mod reply;
mod tags;
mod txn;
pub mod value;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

pub use config::{load_toml, ConfigError, FileConfig, PolicyConfig};
pub use decide::{desired, desired_with, plan_reconcile, Desired, Fix, Forgetful, Memory, Pre};
pub use reply::Trim;
pub use tags::{first_chassis, Phase, Tags};
pub use txn::{plan_transact, plan_transact_raw, plan_transact_within};

/// The database whose transactions the policy looks at.
pub const NB_DB: &str = "OVN_Northbound";
/// The table whose rows the policy looks at.
pub const LSP_TABLE: &str = "Logical_Switch_Port";
/// The first of the two option keys the policy owns.
pub const REQUESTED_CHASSIS: &str = "requested-chassis";
/// The second of the two option keys the policy owns.
pub const ACTIVATION_STRATEGY: &str = "activation-strategy";

/// One `Logical_Switch_Port` row, reduced to the columns the policy reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LspState {
    pub uuid: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub external_ids: BTreeMap<String, String>,
}

/// Read access to the proxy's copy of the `Logical_Switch_Port` table (pre-transaction state),
/// and to what it remembers of migrations ([`Memory`]).
pub trait LspView: Memory {
    fn by_uuid(&self, uuid: &str) -> Option<LspState>;
    fn by_name(&self, name: &str) -> Option<LspState>;
    fn all(&self) -> Vec<LspState>;
    /// How many ports `all` would give (what a scan of the table costs).
    fn size(&self) -> usize;
}

impl Memory for [LspState] {}

/// A linear-scan view, handy for small tests.
impl LspView for [LspState] {
    fn by_uuid(&self, uuid: &str) -> Option<LspState> {
        self.iter().find(|r| r.uuid == uuid).cloned()
    }
    fn by_name(&self, name: &str) -> Option<LspState> {
        self.iter().find(|r| r.name == name).cloned()
    }
    fn all(&self) -> Vec<LspState> {
        self.to_vec()
    }
    fn size(&self) -> usize {
        self.len()
    }
}

/// An immutable, indexed view (tests, benches, offline replay).
#[derive(Debug, Clone, Default)]
pub struct StaticView {
    rows: Vec<LspState>,
    by_uuid: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
}

impl StaticView {
    pub fn new(rows: Vec<LspState>) -> Self {
        let by_uuid = rows.iter().enumerate().map(|(i, r)| (r.uuid.clone(), i)).collect();
        let by_name = rows.iter().enumerate().map(|(i, r)| (r.name.clone(), i)).collect();
        StaticView { rows, by_uuid, by_name }
    }
}

impl Memory for StaticView {}

impl LspView for StaticView {
    fn by_uuid(&self, uuid: &str) -> Option<LspState> {
        self.by_uuid.get(uuid).and_then(|&i| self.rows.get(i)).cloned()
    }
    fn by_name(&self, name: &str) -> Option<LspState> {
        self.by_name.get(name).and_then(|&i| self.rows.get(i)).cloned()
    }
    fn all(&self) -> Vec<LspState> {
        self.rows.clone()
    }
    fn size(&self) -> usize {
        self.rows.len()
    }
}

/// The two option keys the policy owns; `None` = key absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opts {
    #[serde(rename = "requested-chassis", default, skip_serializing_if = "Option::is_none")]
    pub requested_chassis: Option<String>,
    #[serde(rename = "activation-strategy", default, skip_serializing_if = "Option::is_none")]
    pub activation_strategy: Option<String>,
}

impl Opts {
    /// The two keys as they stand in an `options` map.
    pub fn of(options: &BTreeMap<String, String>) -> Opts {
        Opts {
            requested_chassis: options.get(REQUESTED_CHASSIS).cloned(),
            activation_strategy: options.get(ACTIVATION_STRATEGY).cloned(),
        }
    }

    /// The pairs to insert (requested-chassis first).
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        let mut out = Vec::with_capacity(2);
        if let Some(rc) = &self.requested_chassis {
            out.push((REQUESTED_CHASSIS, rc.as_str()));
        }
        if let Some(s) = &self.activation_strategy {
            out.push((ACTIVATION_STRATEGY, s.as_str()));
        }
        out
    }
}

/// Why the policy changes a port's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The tags appeared (or named a new destination).
    Started,
    /// The port was already in this state; a write had changed the keys.
    Reasserted,
    /// The phase became succeeded.
    Succeeded,
    /// The phase became failed.
    Failed,
    /// The destination tag was removed while the migration was in progress.
    Aborted,
    /// In progress by the tags, but the destination is activated and the proxy finishes it.
    Finalized,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Started => "started",
            Cause::Reasserted => "reasserted",
            Cause::Succeeded => "succeeded",
            Cause::Failed => "failed",
            Cause::Aborted => "aborted",
            Cause::Finalized => "finalized",
        }
    }
}

/// Why a tagged port is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A chassis name contains a comma.
    CommaInName,
    /// Source and destination are the same chassis.
    SameChassis,
    /// No source tag and no `requested-chassis` to take it from.
    NoSource,
    /// An op whose `where` the policy cannot evaluate may write this port's options or tags.
    UnresolvedWhere,
    /// The migration is finished and a writer set `requested-chassis` to one chassis of its own
    /// (an operator moving the port): the writer's choice stands.
    OperatorOverride,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::CommaInName => "comma_in_name",
            SkipReason::SameChassis => "same_chassis",
            SkipReason::NoSource => "no_source",
            SkipReason::UnresolvedWhere => "unresolved_where",
            SkipReason::OperatorOverride => "operator_override",
        }
    }
}

/// One port whose options the proxy changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The port's name if known, else its uuid, else its uuid-name.
    pub port: String,
    /// The two keys as the writer's transaction alone would leave them.
    pub before: Opts,
    /// The two keys after the proxy's rewrite.
    pub after: Opts,
    pub cause: Cause,
}

/// One tagged port the policy leaves alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    pub port: String,
    pub reason: SkipReason,
    /// For `OperatorOverride`: the `requested-chassis` the writer chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
}

/// Why a transaction was forwarded without being looked at (the server judges it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unhandled {
    /// Index of the offending client op, if one is to blame.
    pub op: Option<usize>,
    pub what: &'static str,
}

/// Whether `raw` spells the destination tag key in force, or holds a JSON escape (which could
/// spell it): bytes for which this is false cannot tag a port.
pub fn may_spell_destination_key(raw: &[u8], cfg: &PolicyConfig) -> bool {
    thread_local! {
        /// The searcher for the destination key, built once per key (building one costs more
        /// than searching a port write with it).
        static DESTINATION: std::cell::RefCell<Option<(Box<str>, memchr::memmem::Finder<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    if memchr::memchr(b'\\', raw).is_some() {
        return true;
    }
    let key = cfg.destination_key.as_str();
    DESTINATION.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(k, _)| **k != *key) {
            *slot = Some((key.into(), memchr::memmem::Finder::new(key.as_bytes()).into_owned()));
        }
        slot.as_ref().is_none_or(|(_, f)| f.find(raw).is_some())
    })
}

/// What to do with one `transact` request, and what the policy found on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub action: Action,
    /// The changes the rewrite makes (none when forwarding).
    pub changes: Vec<Change>,
    pub skips: Vec<Skip>,
    /// Set when the transaction has a shape the policy does not understand (it is forwarded).
    pub unhandled: Option<Unhandled>,
}

/// Forward the client's bytes, or send a rewrite and give the reply back in the client's shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Forward,
    /// `trim` is `None` when nothing was appended: the reply goes back as it came.
    Rewrite {
        rewrite: Rewrite,
        trim: Option<Trim>,
    },
}

/// How a rewritten transaction differs from the client's: some of its ops replaced, ops
/// appended after them. Every other op goes upstream as the client wrote it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rewrite {
    /// (index among the client's ops, the op to send instead), by index.
    pub edited: Vec<(usize, serde_json::Value)>,
    /// The ops appended, in order.
    pub appended: Vec<Appended>,
}

/// An op the proxy appended: its JSON text, and the index in [`Plan::changes`] of the change
/// it makes. On an existing row it is conditional on the state the proxy assumed: a result of
/// `{"count": 0}` means the row was not as its cache said, and nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub op: String,
    pub change: usize,
}

impl Rewrite {
    /// The rewritten params, from the client's `[db, op, ...]`.
    pub fn apply(&self, params: &serde_json::Value) -> serde_json::Value {
        let mut all = params.as_array().cloned().unwrap_or_default();
        for (k, op) in &self.edited {
            if let Some(slot) = all.get_mut(k + 1) {
                *slot = op.clone();
            }
        }
        all.extend(self.appended.iter().map(|a| serde_json::from_str(&a.op).unwrap_or_default()));
        serde_json::Value::Array(all)
    }

    /// The rewritten params as bytes, from the client's: `db` and each op as they came
    /// (whitespace inside them kept), edited ops and appended ones serialised.
    pub fn splice(&self, db: &str, ops: &[&serde_json::value::RawValue]) -> Option<Vec<u8>> {
        let mut edited = self.edited.iter().peekable();
        let mut out = Vec::with_capacity(ops.iter().map(|o| o.get().len() + 1).sum::<usize>() + db.len() + 2);
        out.push(b'[');
        out.extend_from_slice(db.as_bytes());
        for (k, op) in ops.iter().enumerate() {
            out.push(b',');
            match edited.next_if(|(e, _)| *e == k) {
                Some((_, v)) => serde_json::to_writer(&mut out, v).ok()?,
                None => out.extend_from_slice(op.get().as_bytes()),
            }
        }
        for a in &self.appended {
            out.push(b',');
            out.extend_from_slice(a.op.as_bytes());
        }
        out.push(b']');
        Some(out)
    }
}

impl Plan {
    /// Forward untouched.
    pub fn forward() -> Plan {
        Plan { action: Action::Forward, changes: Vec::new(), skips: Vec::new(), unhandled: None }
    }

    /// How the params differ from the client's, when they do.
    pub fn rewrite(&self) -> Option<&Rewrite> {
        match &self.action {
            Action::Rewrite { rewrite, .. } => Some(rewrite),
            Action::Forward => None,
        }
    }

    /// How the reply goes back to the client's shape, when the proxy appended ops.
    pub fn trim(&self) -> Option<Trim> {
        match &self.action {
            Action::Rewrite { trim, .. } => *trim,
            Action::Forward => None,
        }
    }

    /// The params to send upstream, from the client's (`None`: the client's, unchanged).
    pub fn params_after(&self, params: &serde_json::Value) -> Option<serde_json::Value> {
        self.rewrite().map(|r| r.apply(params))
    }
}
