//! The planner: simulate the client's ops, decide per written row, and make the plan (the row's
//! op edited in place when safe, else a fix appended).

use serde_json::Value;

use super::fix::{appended_fix, edit_mutations, edit_row_options};
use super::raw::Ops;
use super::sim::{Sim, Work};
use super::step::Step;
use crate::policy::decide::{desired_with, port_label, Desired, Pre};
use crate::policy::value::Malformed;
use crate::policy::{
    Action, Appended, Change, LspView, Opts, Plan, PolicyConfig, Rewrite, Skip, SkipReason, Trim, Unhandled,
    REQUESTED_CHASSIS,
};

/// The plan of `ops` (`None`: a `where` would have walked more than `max_scan` ports).
pub(super) fn plan_ops(ops: &Ops, view: &dyn LspView, cfg: &PolicyConfig, max_scan: usize) -> Option<Plan> {
    let mut sim = Sim::new(view, cfg);
    sim.max_scan = max_scan;
    let plan = plan_with(ops, view, cfg, &mut sim);
    (!sim.scan_refused).then_some(plan)
}

/// Reads the ops, simulates them, decides each row they wrote and makes the rewrite.
fn plan_with(ops: &Ops, view: &dyn LspView, cfg: &PolicyConfig, sim: &mut Sim) -> Plan {
    let n = ops.len();
    let unhandled = |op: Option<usize>, e: Malformed| Plan {
        unhandled: Some(Unhandled { op, what: e.0 }),
        ..Plan::forward()
    };

    let mut steps = Vec::with_capacity(n);
    for k in 0..n {
        match ops.step(k) {
            Ok(step) => steps.push(step),
            Err(e) => return unhandled(Some(k), e),
        }
    }
    if steps.iter().all(|s| matches!(s, Step::Ignore | Step::OtherInsert { .. })) {
        return Plan::forward();
    }
    for (k, step) in steps.iter().enumerate() {
        if let Err(e) = sim.step(k, step) {
            return unhandled(Some(k), e);
        }
    }

    let mut plan = Plan::forward();
    let mut edited: Vec<(usize, Value)> = Vec::new();
    let mut appended = Vec::new();
    for w in &sim.rows {
        let Some((k, single)) = w.last_write else { continue };
        if w.deleted {
            continue;
        }
        let Some(want) = decide_row(w, view, cfg, &mut plan.skips) else { continue };
        let before = Opts::of(&w.cur.options);
        if before == want.opts {
            continue;
        }
        let port = port_label(&w.cur, w.named.as_deref());
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
            let Some(text) = appended_fix(w, sim, view, &want.opts) else {
                plan.skips.push(Skip { port, reason: SkipReason::UnresolvedWhere, chosen: None });
                continue;
            };
            appended.push(Appended { op: text, change: plan.changes.len() });
        }
        plan.changes.push(Change { port, before, after: want.opts, cause: want.cause });
    }
    if plan.changes.is_empty() {
        return plan;
    }
    let trim = (!appended.is_empty()).then(|| Trim { client_ops: n, upstream_ops: n + appended.len() });
    edited.sort_by_key(|(k, _)| *k);
    plan.action = Action::Rewrite { rewrite: Rewrite { edited, appended }, trim };
    plan
}

/// The options a row the transaction wrote should have, by the policy (`None`: the policy
/// leaves it alone; a tagged row so left is added to `skips`, with the reason).
fn decide_row(w: &Work, view: &dyn LspView, cfg: &PolicyConfig, skips: &mut Vec<Skip>) -> Option<Desired> {
    let port = || port_label(&w.cur, w.named.as_deref());
    if w.tainted {
        if w.ever_tagged {
            skips.push(Skip { port: port(), reason: SkipReason::UnresolvedWhere, chosen: None });
        }
        return None;
    }
    match desired_with(Pre::from_option(w.pre.as_ref()), &w.cur, cfg, view) {
        Ok(want) => want,
        Err(reason) => {
            let chosen = (reason == SkipReason::OperatorOverride)
                .then(|| w.cur.options.get(REQUESTED_CHASSIS).cloned())
                .flatten();
            skips.push(Skip { port: port(), reason, chosen });
            None
        }
    }
}
