//! Transaction planning: simulate the client's ops over working copies of the affected rows,
//! decide per row, then rewrite (in place when safe, else by appending a `mutate`).
//!
//! [`step`] reads one op, [`sim`] runs the ops over working copies of the rows, [`plan`] decides
//! per row and makes the [`Plan`], [`fix`] writes the appended fixes and in-place edits, [`raw`]
//! reads the ops from their text.

mod fix;
mod plan;
mod raw;
mod sim;
mod step;

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::Value;

use self::plan::plan_ops;
use self::raw::Ops;
use super::{may_spell_destination_key, LspView, Plan, PolicyConfig, NB_DB};

/// Plans one `transact`: `params` is `[db, op, op, ...]`. Anything other than `OVN_Northbound`,
/// or an op shape the policy does not understand, is forwarded untouched.
pub fn plan_transact(params: &Value, view: &dyn LspView, cfg: &PolicyConfig) -> Plan {
    plan_transact_within(params, view, cfg, usize::MAX).unwrap_or_else(Plan::forward)
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
        return Some(Plan::forward());
    };
    if db.as_str() != Some(NB_DB) || ops.is_empty() {
        return Some(Plan::forward());
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
        return Some(Plan::forward());
    }
    let tag_free = !ops.iter().any(|op| may_spell_destination_key(op.get().as_bytes(), cfg));
    plan_ops(&Ops::Raw { ops, tag_free }, view, cfg, max_scan)
}

#[cfg(test)]
mod tests;
