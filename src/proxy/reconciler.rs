//! The reconciler: fixes ports whose options a writer that bypassed the proxy left wrong
//! (another CMS instance, `ovn-nbctl` on the database host, writes made while the proxy was
//! down), and finishes the migrations the Southbound shows activated (finalize on activation).
//! It decides from the rows the NB monitor shows; the monitor connection sends what it plans.
//!
//! **Invariant: conditional.** Each row's fix is a `wait` that its `options` and `external_ids`
//! are still exactly what the proxy saw, then a `mutate` of the two keys; every transaction
//! starts with an `assert` of the reconciler lock. A concurrent writer wins; the row is looked
//! at again when its new state arrives.
//!
//! **Invariant: paced.** Fixes wait in a queue (one per row: a newer state replaces the planned
//! fix) and go out in transactions of at most [`BATCH`] rows, at most [`IN_FLIGHT`] of them
//! awaiting the server: a burst of thousands of rows never fills the connection's queues, and
//! every reply frees room for the next batch. Work per row is independent of the number of
//! rows and of the history.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Value};
use tracing::{debug, warn};

use super::Shared;
use crate::cache::nb::{Row, Uuid};
use crate::policy::{plan_reconcile, Fix, LspState, Pre, SkipReason, NB_DB, REQUESTED_CHASSIS};
use crate::proxy::rewrite::{audit, audit_yield, skip_message, Audit};

/// Rows per reconcile transaction.
pub(super) const BATCH: usize = 64;
/// Reconcile transactions awaiting the server at once.
pub(super) const IN_FLIGHT: usize = 4;
/// Consecutive lost races of one row before its fix is no longer retried on its own (the next
/// change of the row still plans one).
const MAX_ATTEMPTS: u32 = 3;

/// A fix planned for a row from the state `seen`.
struct Planned {
    uuid: Uuid,
    seen: Arc<Row>,
    fix: Fix,
}

/// How one row's fix went, as the `reconciles` counter labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    /// The `assert` of the lock failed: not this proxy's turn.
    NotOwner,
    /// The row's `wait` failed, or the whole transaction did: a writer came first.
    Conflict,
    /// `--dry-run`: logged, not sent.
    DryRun,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::NotOwner => "not_owner",
            Outcome::Conflict => "conflict",
            Outcome::DryRun => "dry_run",
        }
    }
}

/// What the server's reply says of a batch of fixes, as sent by [`batch_params`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Every fix committed.
    Applied,
    /// The lock's `assert` failed: nothing was written.
    NotOwner,
    /// Row `k`'s `wait` (or `mutate`) failed: it lost a race; the other rows were not written
    /// through no fault of their own.
    Lost(usize),
    /// The transaction failed as a whole (a commit or JSON-RPC error, an error past the rows'
    /// ops, no result): nothing was written.
    Failed,
}

/// Reads the reply to a batch of `rows` fixes. Ops: `[assert, wait₀, mutate₀, wait₁, mutate₁,
/// …, comment]`: row k's ops at 1+2k, 2+2k.
fn verdict(reply: &Value, rows: usize) -> Verdict {
    let results = reply.get("result").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let rpc_error = reply.get("error").is_some_and(|e| !e.is_null());
    let failed_at = results.iter().position(|r| r.get("error").is_some_and(|e| !e.is_null()));
    match failed_at {
        None if !rpc_error && !results.is_empty() => Verdict::Applied,
        Some(0) if results[0].get("error").is_some_and(|e| e == "not owner") => Verdict::NotOwner,
        Some(i) if i >= 1 && i <= 2 * rows => Verdict::Lost((i - 1) / 2),
        _ => Verdict::Failed,
    }
}

/// The params of one reconcile transaction: the lock asserted, each row's fix (a `wait` on
/// the state seen, a `mutate` of the two keys), a comment naming the first ports.
fn batch_params<'a>(lock: &str, fixes: impl ExactSizeIterator<Item = &'a Fix>) -> Value {
    let rows = fixes.len();
    let mut params = vec![json!(NB_DB), json!({"op": "assert", "lock": lock})];
    let mut names = Vec::new();
    for fix in fixes {
        params.extend(fix.ops.iter().cloned());
        if names.len() < 8 {
            names.push(fix.change.port.as_str());
        }
    }
    let more = if rows > names.len() { format!(" and {} more", rows - names.len()) } else { String::new() };
    params.push(
        json!({"op": "comment", "comment": format!("ovn-nb-proxy: reconcile {}{more}", names.join(" "))}),
    );
    Value::Array(params)
}

/// What a reply to a reconcile transaction meant for the reconciler.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    Done,
    /// The `assert` failed: another proxy holds the lock now.
    NotOwner,
}

#[derive(Default)]
pub(super) struct Reconciler {
    planned: HashMap<Uuid, Planned>,
    /// The queues planned rows go out from (they may hold rows no longer planned: skipped):
    /// rows a small change touched first, so that one port's fix never waits behind a burst or
    /// a first pass over thousands.
    urgent: VecDeque<Uuid>,
    bulk: VecDeque<Uuid>,
    /// Rows in a transaction in flight, with the state the fix was planned from.
    busy: HashMap<Uuid, Arc<Row>>,
    batches: HashMap<u64, Vec<Planned>>,
    next_batch: u64,
    attempts: HashMap<Uuid, u32>,
    /// Rows left alone, and why: reported once per reason, not at every change of the row.
    skipped: HashMap<Uuid, SkipReason>,
}

impl Reconciler {
    /// Decides for one row, from what is known of it before this change (`pre`), its current
    /// state `seen` (and `row`, the same as the policy reads it). Replaces any fix planned
    /// for the row before. `urgent`: the row comes from a small change (not a burst, not a
    /// first pass): its fix goes first.
    pub(super) fn look(
        &mut self,
        shared: &Shared,
        uuid: Uuid,
        pre: Pre<'_>,
        seen: Arc<Row>,
        row: &LspState,
        urgent: bool,
    ) {
        if self.busy.get(&uuid).is_some_and(|b| Arc::ptr_eq(b, &seen) || **b == *seen) {
            return; // the fix for exactly this state is on its way
        }
        let policy = shared.policy();
        match plan_reconcile(pre, row, &policy, &shared.view()) {
            Ok(Some(fix)) => {
                self.skipped.remove(&uuid);
                let new = self.planned.insert(uuid, Planned { uuid, seen, fix }).is_none();
                if urgent {
                    self.urgent.push_back(uuid);
                } else if new {
                    self.bulk.push_back(uuid);
                }
            }
            Ok(None) => {
                self.skipped.remove(&uuid);
                self.planned.remove(&uuid);
            }
            Err(reason) => {
                self.planned.remove(&uuid);
                if self.skipped.insert(uuid, reason) != Some(reason) {
                    shared.metrics.skips.get_or_create(&[("reason", reason.as_str())]).inc();
                    match reason {
                        SkipReason::OperatorOverride => audit_yield(
                            &row.name,
                            row.options.get(REQUESTED_CHASSIS).map(String::as_str),
                            "reconciler",
                        ),
                        _ => warn!(port = %row.name, reason = %reason.as_str(), "{}", skip_message(reason)),
                    }
                }
            }
        }
        shared.metrics.reconcile_queue.set(self.planned.len() as i64);
    }

    /// The row is gone: nothing to do for it any more.
    pub(super) fn forget(&mut self, uuid: Uuid) {
        self.planned.remove(&uuid);
        self.skipped.remove(&uuid);
        self.attempts.remove(&uuid);
    }

    /// The lock is gone: another proxy decides now.
    pub(super) fn clear(&mut self) {
        *self = Reconciler::default();
    }

    /// The connection is gone: what was in flight will never be answered (it may or may not
    /// have been committed) and goes back to the queue with what was planned; both are checked
    /// against the rows the next synchronisation brings ([`Reconciler::revalidate`]). A fix
    /// planned from a change the proxy will not see again (an abort: the tag removal is only
    /// visible against the previous state) is so kept across a database restart.
    pub(super) fn detach(&mut self) {
        self.busy.clear();
        for (_, batch) in self.batches.drain() {
            for p in batch {
                if !self.planned.contains_key(&p.uuid) {
                    self.bulk.push_back(p.uuid);
                    self.planned.insert(p.uuid, p);
                }
            }
        }
    }

    /// After a (re)synchronisation: a planned fix stays if its row is still exactly as the fix
    /// was planned from (else the row's new state is looked at by the first pass).
    pub(super) fn revalidate(&mut self, cache: &crate::cache::LspCache) {
        self.planned.retain(|uuid, p| match cache.row(*uuid) {
            Some(now) if *now == *p.seen => {
                p.seen = now;
                true
            }
            _ => false,
        });
    }

    pub(super) fn queued(&self) -> usize {
        self.planned.len()
    }

    /// The next transactions to send, as many as the in-flight bound allows: `(token, params)`.
    /// In a dry run, the fixes are logged (as the audit lines they would make) and dropped.
    pub(super) fn next_batches(&mut self, shared: &Shared, lock: &str) -> Vec<(u64, Value)> {
        let mut out = Vec::new();
        let mut deferred = Vec::new();
        while self.batches.len() < IN_FLIGHT && !(self.urgent.is_empty() && self.bulk.is_empty()) {
            let mut batch = Vec::new();
            while batch.len() < BATCH {
                let Some(uuid) = self.urgent.pop_front().or_else(|| self.bulk.pop_front()) else { break };
                if self.busy.contains_key(&uuid) {
                    if self.planned.contains_key(&uuid) {
                        deferred.push(uuid);
                    }
                    continue;
                }
                let Some(p) = self.planned.remove(&uuid) else { continue };
                // Planned from the state the cache still holds (else a newer one replaced it).
                if !shared.cache.row(uuid).is_some_and(|now| Arc::ptr_eq(&now, &p.seen)) {
                    continue;
                }
                batch.push(p);
            }
            if batch.is_empty() {
                break;
            }
            if shared.dry_run {
                for p in &batch {
                    audit(Audit::Reconcile, &p.fix.change, "reconciler", true);
                    count(shared, Outcome::DryRun);
                }
                continue;
            }
            for p in &batch {
                self.busy.insert(p.uuid, p.seen.clone());
            }
            let params = batch_params(lock, batch.iter().map(|p| &p.fix));
            let token = self.next_batch;
            self.next_batch += 1;
            self.batches.insert(token, batch);
            out.push((token, params));
        }
        self.bulk.extend(deferred);
        shared.metrics.reconcile_queue.set(self.planned.len() as i64);
        out
    }

    /// The server's reply to batch `token`. Rows whose fix committed are audited; a row whose
    /// `wait` failed lost a race (its new state, on its way, is looked at then); the other rows
    /// of a failed batch go back to the queue.
    pub(super) fn answered(&mut self, shared: &Shared, token: u64, reply: &Value) -> Answer {
        let Some(batch) = self.batches.remove(&token) else { return Answer::Done };
        for p in &batch {
            self.busy.remove(&p.uuid);
        }
        let culprit = match verdict(reply, batch.len()) {
            Verdict::Applied => {
                for p in &batch {
                    audit(Audit::Reconcile, &p.fix.change, "reconciler", false);
                    count(shared, Outcome::Applied);
                    self.attempts.remove(&p.uuid);
                }
                return Answer::Done;
            }
            Verdict::NotOwner => {
                count(shared, Outcome::NotOwner);
                return Answer::NotOwner;
            }
            Verdict::Lost(k) => Some(k),
            Verdict::Failed => None,
        };
        for (k, p) in batch.into_iter().enumerate() {
            if culprit.is_some() && culprit != Some(k) {
                // Not written, through no fault of its own: planned again (unless a newer
                // state replaced it meanwhile).
                if !self.planned.contains_key(&p.uuid) {
                    self.bulk.push_back(p.uuid);
                    self.planned.insert(p.uuid, p);
                }
                continue;
            }
            count(shared, Outcome::Conflict);
            let n = self.attempts.entry(p.uuid).or_default();
            *n += 1;
            debug!(port = %p.fix.change.port, %reply, "reconcile lost a race; the row's new state decides");
            if *n >= MAX_ATTEMPTS {
                warn!(port = %p.fix.change.port, "reconcile keeps losing races; waiting for the next change");
                self.planned.remove(&p.uuid);
            } else if culprit.is_none() && !self.planned.contains_key(&p.uuid) {
                // The whole transaction failed (commit error, JSON-RPC error): try again.
                self.bulk.push_back(p.uuid);
                self.planned.insert(p.uuid, p);
            }
        }
        Answer::Done
    }
}

fn count(shared: &Shared, outcome: Outcome) {
    shared.metrics.reconciles.get_or_create(&[("outcome", outcome.as_str())]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;
    use std::collections::HashSet;

    #[test]
    fn what_a_reply_says_of_a_batch() {
        let ok = json!({});
        let err = |e: &str| json!({"error": e});
        let cases: Vec<(&str, Value, Verdict)> = vec![
            ("all committed", json!({"result": [ok, ok, ok, ok, ok, ok], "error": null}), Verdict::Applied),
            ("not the lock's owner", json!({"result": [err("not owner")], "error": null}), Verdict::NotOwner),
            (
                "row 0's wait failed",
                json!({"result": [ok, err("timed out")], "error": null}),
                Verdict::Lost(0),
            ),
            (
                "row 1's mutate failed",
                json!({"result": [ok, ok, ok, ok, err("constraint violation")]}),
                Verdict::Lost(1),
            ),
            ("the assert failed otherwise", json!({"result": [err("syntax error")]}), Verdict::Failed),
            (
                "the commit failed",
                json!({"result": [ok, ok, ok, ok, ok, ok, err("referential integrity")]}),
                Verdict::Failed,
            ),
            ("a JSON-RPC error", json!({"result": null, "error": "unknown database"}), Verdict::Failed),
            ("an empty result", json!({"result": [], "error": null}), Verdict::Failed),
            ("no result at all", json!({"id": 3}), Verdict::Failed),
        ];
        for (name, reply, want) in cases {
            assert_eq!(verdict(&reply, 2), want, "{name}");
        }
    }

    #[test]
    fn a_batch_asserts_the_lock_then_each_fix_then_names_its_ports() {
        let fix = |port: &str| Fix {
            ops: [json!({"op": "wait", "port": port}), json!({"op": "mutate", "port": port})],
            change: crate::policy::Change {
                port: port.into(),
                before: Default::default(),
                after: Default::default(),
                cause: crate::policy::Cause::Started,
            },
        };
        let fixes: Vec<Fix> = (0..10).map(|i| fix(&format!("p{i}"))).collect();
        let params = batch_params("the-lock", fixes.iter());
        let ops = params.as_array().expect("array");
        assert_eq!(ops.len(), 1 + 1 + 2 * 10 + 1);
        assert_eq!((&ops[0], &ops[1]), (&json!(NB_DB), &json!({"op": "assert", "lock": "the-lock"})));
        assert_eq!(ops[3], json!({"op": "mutate", "port": "p0"}));
        assert_eq!(ops[21], json!({"op": "mutate", "port": "p9"}));
        assert_eq!(ops[22]["comment"], "ovn-nb-proxy: reconcile p0 p1 p2 p3 p4 p5 p6 p7 and 2 more");
    }

    impl Reconciler {
        fn in_flight(&self) -> HashSet<Uuid> {
            self.busy.keys().copied().collect()
        }
    }

    /// `n` tagged rows, all needing a fix; `extra` added to row 0's options.
    fn initial(n: usize, extra: Option<(&str, &str)>) -> String {
        let mut rows = serde_json::Map::new();
        for i in 0..n {
            let uuid = format!("00000000-0000-4000-8000-{i:012}");
            let mut options = vec![json!(["requested-chassis", "hv1"])];
            if let (0, Some((k, v))) = (i, extra) {
                options.push(json!([k, v]));
            }
            rows.insert(
                uuid,
                json!({"initial": {"name": format!("p{i}"), "options": ["map", options],
                    "external_ids": ["map", [["migration-destination", "hv2"]]]}}),
            );
        }
        json!({"Logical_Switch_Port": rows}).to_string()
    }

    fn shared_with(n: usize) -> Shared {
        let shared = Shared::new(PolicyConfig::default(), false, false);
        shared.cache.reset(&initial(n, None)).expect("reset");
        shared
    }

    #[test]
    fn planned_fixes_survive_a_resync_if_their_rows_did_not_change() {
        let shared = shared_with(3);
        let mut r = Reconciler::default();
        look_all(&mut r, &shared);
        assert_eq!(r.next_batches(&shared, "l").len(), 1);
        // The connection goes with the batch in flight: back to the queue.
        r.detach();
        assert_eq!((r.queued(), r.in_flight().len()), (3, 0));
        // The resynchronisation shows row 0 changed meanwhile: its fix goes; the others stay.
        shared.cache.reset(&initial(3, Some(("x", "1")))).expect("reset");
        r.revalidate(&shared.cache);
        assert_eq!(r.queued(), 2);
        let sent = r.next_batches(&shared, "l");
        assert_eq!(sent[0].1.as_array().map(Vec::len), Some(1 + 1 + 2 * 2 + 1));
    }

    #[test]
    fn a_small_change_goes_before_a_burst() {
        let shared = shared_with(300);
        let mut r = Reconciler::default();
        look_all(&mut r, &shared);
        let last =
            *shared.cache.tagged("migration-destination").iter().max_by_key(|u| u.to_string()).expect("rows");
        let row = shared.cache.row(last).expect("row");
        let state = row.state(last);
        r.look(&shared, last, Pre::Unseen, row, &state, true);
        let sent = r.next_batches(&shared, "l");
        let first = sent[0].1[3]["where"][0][2][1].as_str().unwrap_or_default().to_string();
        assert_eq!(first, last.to_string(), "the urgent row is in the first batch, first");
    }

    fn look_all(r: &mut Reconciler, shared: &Shared) {
        for uuid in shared.cache.tagged("migration-destination") {
            let row = shared.cache.row(uuid).expect("row");
            let state = row.state(uuid);
            r.look(shared, uuid, Pre::Unseen, row, &state, false);
        }
    }

    fn ok(n_ops: usize) -> Value {
        json!({"id": 1, "result": vec![json!({}); n_ops], "error": null})
    }

    #[test]
    fn a_burst_is_paced_in_batches() {
        let shared = shared_with(1000);
        let mut r = Reconciler::default();
        look_all(&mut r, &shared);
        assert_eq!(r.queued(), 1000);
        let sent = r.next_batches(&shared, "l");
        assert_eq!(sent.len(), IN_FLIGHT);
        assert_eq!(r.in_flight().len(), IN_FLIGHT * BATCH);
        let params = sent[0].1.as_array().expect("params");
        assert_eq!(params.len(), 1 + 1 + 2 * BATCH + 1, "db, assert, wait+mutate per row, comment");
        assert!(r.next_batches(&shared, "l").is_empty(), "no more until a reply");
        // Each reply lets one more batch go.
        let mut total = 0;
        let mut pending: VecDeque<(u64, usize)> =
            sent.iter().map(|(t, p)| (*t, p.as_array().map_or(0, Vec::len) - 1)).collect();
        while let Some((token, n)) = pending.pop_front() {
            total += (n - 2) / 2;
            assert_eq!(r.answered(&shared, token, &ok(n)), Answer::Done);
            for (t, p) in r.next_batches(&shared, "l") {
                pending.push_back((t, p.as_array().map_or(0, Vec::len) - 1));
            }
            assert!(r.batches.len() <= IN_FLIGHT);
        }
        assert_eq!(total, 1000);
        assert_eq!(r.queued(), 0);
    }

    #[test]
    fn a_lost_race_requeues_the_innocent_rows_of_the_batch() {
        let shared = shared_with(3);
        let mut r = Reconciler::default();
        look_all(&mut r, &shared);
        let sent = r.next_batches(&shared, "l");
        let (token, params) = &sent[0];
        let n = params.as_array().map_or(0, Vec::len) - 1;
        // The second row's wait failed: the first and third are planned again.
        let mut result = vec![json!({}), json!({}), json!({})];
        result.push(json!({"error": "timed out", "details": "\"where\" clause test failed"}));
        result.resize(n, Value::Null);
        let reply = json!({"id": 1, "result": result, "error": null});
        assert_eq!(r.answered(&shared, *token, &reply), Answer::Done);
        assert_eq!(r.queued(), 2);
        assert!(r.in_flight().is_empty());
        // The lock lost: said so.
        let sent = r.next_batches(&shared, "l");
        let reply = json!({"id": 2, "result": [{"error": "not owner"}, null], "error": null});
        assert_eq!(r.answered(&shared, sent[0].0, &reply), Answer::NotOwner);
    }

    #[test]
    fn a_newer_state_replaces_the_planned_fix() {
        let shared = shared_with(1);
        let mut r = Reconciler::default();
        look_all(&mut r, &shared);
        // The row changes before the fix went out: fixed already by its writer.
        let uuid = shared.cache.tagged("migration-destination")[0];
        let u = uuid.to_string();
        shared
            .cache
            .apply(&json!({"Logical_Switch_Port": {u: {"modify": {"options": ["map", [["requested-chassis", "hv1,hv2"], ["activation-strategy", "rarp"]]]}}}}).to_string())
            .expect("apply");
        let row = shared.cache.row(uuid).expect("row");
        let state = row.state(uuid);
        r.look(&shared, uuid, Pre::Unseen, row, &state, true);
        assert_eq!(r.queued(), 0);
        assert!(r.next_batches(&shared, "l").is_empty());
    }
}
