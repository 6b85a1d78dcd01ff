//! The per-row decision: which `requested-chassis` / `activation-strategy` a port should have.

use serde_json::{json, Value};

use super::tags::{first_chassis, strategy_value, Phase, Tags};
use super::value::{map_json, set_json, StrMap, UuidRef};
use super::{
    Cause, Change, LspState, Opts, PolicyConfig, SkipReason, ACTIVATION_STRATEGY, LSP_TABLE,
    REQUESTED_CHASSIS,
};

/// The options a migrating port should have, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub opts: Opts,
    pub cause: Cause,
}

fn check_name(name: &str) -> Result<&str, SkipReason> {
    if name.contains(',') {
        Err(SkipReason::CommaInName)
    } else {
        Ok(name)
    }
}

/// The source chassis, first found of: the source tag; the source the proxy remembers for this
/// migration (`remembered`: what it saw when the destination first appeared, or learnt from the
/// Southbound); if the port was already migrating before this write, the first entry of its
/// pre-state `requested-chassis`; else the first entry of the writer's post-state
/// `requested-chassis`.
fn source<'a>(
    tags: &Tags<'a>,
    remembered: Option<&'a str>,
    pre: Option<(&'a LspState, &Tags<'a>)>,
    post: &'a LspState,
) -> Result<&'a str, SkipReason> {
    let from_pre = pre.filter(|(_, t)| t.dst.is_some()).and_then(|(p, _)| first_chassis(&p.options));
    let src = tags
        .src
        .or(remembered)
        .or(from_pre)
        .or_else(|| first_chassis(&post.options))
        .ok_or(SkipReason::NoSource)?;
    check_name(src)
}

/// What the proxy knows of a row before the write being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pre<'a> {
    /// The row as it was before this write: the port cache's row for a client transaction, the
    /// monitor's previous row for a change seen on the monitor.
    Known(&'a LspState),
    /// The row is inserted by this write.
    Inserted,
    /// A row looked at without a previous state: the reconciler's first look at every port after
    /// a start or a resynchronisation, a row looked at again.
    Unseen,
}

impl<'a> Pre<'a> {
    /// `Known` when `row` is given, else `Inserted`.
    pub fn from_option(row: Option<&'a LspState>) -> Pre<'a> {
        row.map_or(Pre::Inserted, Pre::Known)
    }
}

/// What the proxy remembers beyond the rows themselves (its migration timelines), for the
/// decisions the rows alone cannot make.
pub trait Memory {
    /// True when the proxy has finished the in-progress migration of `port` to `destination`
    /// itself, because the Southbound showed the destination activated (finalize on
    /// activation), and that migration is still the one in progress.
    fn finalized(&self, _port: &str, _destination: &str) -> bool {
        false
    }

    /// The source of the migration of `port` to `destination` the proxy is following, as it
    /// saw it when the destination first appeared (or learnt it from the Southbound binding).
    /// `finished`: the rows say the migration is finished. A migration the proxy saw finish
    /// followed by rows in progress is a new one: it gets nothing.
    fn source(&self, _port: &str, _destination: &str, _finished: bool) -> Option<String> {
        None
    }

    /// The final `requested-chassis` of a finished migration of `port` that no row has shown
    /// yet, and the value it replaces (`stale`; `None`: absent), with the cause: `Some` when the
    /// fix made at the transition was lost (it lost a race, or a resynchronisation came first).
    fn due(&self, _port: &str) -> Option<(Option<String>, String, Cause)> {
        None
    }
}

/// No memory: the rows alone decide.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forgetful;

impl Memory for Forgetful {}

/// A `requested-chassis` that names one chassis, other than `final_`: a writer chose where the
/// port runs (an operator moving it), not a leftover of the migration.
fn chosen_elsewhere(post: &LspState, final_: &str) -> bool {
    post.options
        .get(REQUESTED_CHASSIS)
        .map(|rc| rc.trim())
        .is_some_and(|rc| !rc.is_empty() && !rc.contains(',') && rc != final_)
}

/// The per-row decision, from what is known of the row before the write (`pre`) and the state
/// the writer's transaction leaves (`post`), with no memory beyond the rows.
///
/// `Ok(None)`: not the policy's business (no tags, and not an abort). `Ok(Some(d))`: the port
/// should have exactly `d.opts` (which may already be the case). `Err`: a tagged port left alone.
pub fn desired(
    pre: Option<&LspState>,
    post: &LspState,
    cfg: &PolicyConfig,
) -> Result<Option<Desired>, SkipReason> {
    desired_with(Pre::from_option(pre), post, cfg, &Forgetful)
}

/// `desired`, with what the proxy remembers (`mem`).
///
/// * In progress: `src,dst` and the strategy, always (a write that changes them gets them back),
///   unless the proxy finalized this very migration (`Memory::finalized`): then `dst`.
/// * Finished (succeeded, failed): the final chassis, no strategy, when the phase is reached and
///   whenever a write leaves `requested-chassis` absent or listing several chassis. A write that
///   sets it to one chassis of its own on a port whose migration was already finished is an
///   operator's choice and stands (`SkipReason::OperatorOverride`).
pub fn desired_with(
    pre: Pre<'_>,
    post: &LspState,
    cfg: &PolicyConfig,
    mem: &dyn Memory,
) -> Result<Option<Desired>, SkipReason> {
    let tags = Tags::read(&post.external_ids, cfg);
    let Some(dst) = tags.dst else {
        return Ok(match pre {
            Pre::Known(p) => abort(p, post, cfg, mem).or_else(|| due_final(post, mem)),
            Pre::Unseen => due_final(post, mem),
            Pre::Inserted => None,
        });
    };
    let dst = check_name(dst)?;
    let pre_tags = match pre {
        Pre::Known(p) => Some((p, Tags::read(&p.external_ids, cfg))),
        Pre::Inserted | Pre::Unseen => None,
    };
    let pre_ref = pre_tags.as_ref().map(|(p, t)| (*p, t));
    let same_state = pre_tags.as_ref().is_some_and(|(_, t)| t.dst == Some(dst) && t.phase == tags.phase);
    // The write leaves the migration in the stage it was already in (not known to be a change).
    let continuing = match pre {
        Pre::Known(_) => same_state,
        Pre::Unseen => true,
        Pre::Inserted => false,
    };
    let remembered = mem.source(&post.name, dst, tags.phase != Phase::InProgress);
    let src = || source(&tags, remembered.as_deref(), pre_ref, post);
    let to = |rc: &str| Opts { requested_chassis: Some(rc.to_owned()), activation_strategy: None };
    let (opts, cause) = match tags.phase {
        Phase::InProgress if continuing && mem.finalized(&post.name, dst) => {
            let opts = to(dst);
            let already = matches!(pre, Pre::Known(p) if Opts::of(&p.options) == opts);
            return Ok(Some(Desired {
                opts,
                cause: if already { Cause::Reasserted } else { Cause::Finalized },
            }));
        }
        Phase::InProgress => {
            let src = src()?;
            if src == dst {
                return Err(SkipReason::SameChassis);
            }
            let strategy = match tags.strategy {
                Some(over) => over,
                None => strategy_value(&cfg.default_strategy),
            };
            let opts = Opts {
                requested_chassis: Some(format!("{src},{dst}")),
                activation_strategy: strategy.map(str::to_owned),
            };
            (opts, Cause::Started)
        }
        Phase::Succeeded => {
            // A final state still due is not overtaken by the stale value it replaces.
            if continuing && chosen_elsewhere(post, dst) && due_final(post, mem).is_none() {
                return Err(SkipReason::OperatorOverride);
            }
            (to(dst), Cause::Succeeded)
        }
        Phase::Failed => {
            let src = src()?;
            if src == dst {
                return Err(SkipReason::SameChassis);
            }
            if continuing && chosen_elsewhere(post, src) && due_final(post, mem).is_none() {
                return Err(SkipReason::OperatorOverride);
            }
            (to(src), Cause::Failed)
        }
    };
    let cause = if same_state { Cause::Reasserted } else { cause };
    Ok(Some(Desired { opts, cause }))
}

/// A final state the proxy saw become due and not applied yet (its fix lost a race, or a
/// resynchronisation came between): still due while `requested-chassis` is the value it
/// replaces.
fn due_final(post: &LspState, mem: &dyn Memory) -> Option<Desired> {
    let (stale, rc, cause) = mem.due(&post.name)?;
    (post.options.get(REQUESTED_CHASSIS) == stale.as_ref())
        .then_some(Desired { opts: Opts { requested_chassis: Some(rc), activation_strategy: None }, cause })
}

/// The destination tag went away while the migration was in progress, and the write did not
/// choose a `requested-chassis` of its own: roll back to the source. Not chosen: the options are
/// still the proxy's `src,dst`, or the write left `requested-chassis` as it was before it (a
/// value an earlier write set during the migration, which the policy overrides, and which the
/// proxy had not yet reasserted: its fix lost a race). A write that changes it stands.
fn abort(pre: &LspState, post: &LspState, cfg: &PolicyConfig, mem: &dyn Memory) -> Option<Desired> {
    let tags = Tags::read(&pre.external_ids, cfg);
    if tags.phase != Phase::InProgress {
        return None;
    }
    let dst = check_name(tags.dst?).ok()?;
    let remembered = mem.source(&pre.name, dst, false);
    let src = source(&tags, remembered.as_deref(), None, pre).ok()?;
    let rc = post.options.get(REQUESTED_CHASSIS);
    let untouched = rc == pre.options.get(REQUESTED_CHASSIS);
    if src == dst || !(rc == Some(&format!("{src},{dst}")) || untouched) {
        return None;
    }
    Some(Desired {
        opts: Opts { requested_chassis: Some(src.to_owned()), activation_strategy: None },
        cause: Cause::Aborted,
    })
}

/// The name a log line uses for a port.
pub(crate) fn port_label(state: &LspState, named: Option<&str>) -> String {
    if !state.name.is_empty() {
        state.name.clone()
    } else if !state.uuid.is_empty() {
        state.uuid.clone()
    } else {
        named.unwrap_or("(unnamed)").to_owned()
    }
}

/// The two mutations that make `options` hold exactly `opts` for the policy's keys.
pub(crate) fn option_mutations(opts: &Opts) -> Vec<Value> {
    let mut out = vec![json!(["options", "delete", set_json([REQUESTED_CHASSIS, ACTIVATION_STRATEGY])])];
    let pairs = opts.pairs();
    if !pairs.is_empty() {
        out.push(json!(["options", "insert", map_json(pairs)]));
    }
    out
}

/// A `mutate` of one row's options.
pub(crate) fn mutate_op(where_: Value, opts: &Opts) -> Value {
    json!({"op": "mutate", "table": LSP_TABLE, "where": where_, "mutations": option_mutations(opts)})
}

pub(crate) fn where_uuid(target: &UuidRef) -> Value {
    json!([["_uuid", "==", target.to_json()]])
}

/// A fix-up of one row: a `wait` that its `options` and `external_ids` are still exactly as
/// seen, then a `mutate` of the two keys. The monitor batches the fixes of several rows into one
/// transaction, after an `assert` of its lock.
#[derive(Debug, Clone, PartialEq)]
pub struct Fix {
    pub ops: [Value; 2],
    pub change: Change,
}

/// The fix-up for a row seen on the monitor (written by something that bypassed the proxy, or
/// finished by the proxy itself). `Ok(None)`: nothing to do. `Err`: a tagged port left alone.
/// `pre` is what the monitor showed before this change, when known: it gives the source of a
/// migration in progress and makes aborts visible, as for a client transaction.
pub fn plan_reconcile(
    pre: Pre<'_>,
    row: &LspState,
    cfg: &PolicyConfig,
    mem: &dyn Memory,
) -> Result<Option<Fix>, SkipReason> {
    let Some(want) = desired_with(pre, row, cfg, mem)? else { return Ok(None) };
    let before = Opts::of(&row.options);
    if before == want.opts || row.uuid.is_empty() {
        return Ok(None);
    }
    let where_ = where_uuid(&UuidRef::Uuid(row.uuid.clone()));
    let as_pairs = |m: &StrMap| map_json(m.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let ops = [
        json!({
            "op": "wait", "table": LSP_TABLE, "timeout": 0, "where": where_.clone(),
            "columns": ["options", "external_ids"], "until": "==",
            "rows": [{"options": as_pairs(&row.options), "external_ids": as_pairs(&row.external_ids)}],
        }),
        mutate_op(where_, &want.opts),
    ];
    Ok(Some(Fix {
        ops,
        change: Change { port: port_label(row, None), before, after: want.opts, cause: want.cause },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(options: &[(&str, &str)], ext: &[(&str, &str)]) -> LspState {
        LspState {
            uuid: "u1".into(),
            name: "p1".into(),
            options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            external_ids: ext.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn opts(rc: Option<&str>, strategy: Option<&str>) -> Opts {
        Opts { requested_chassis: rc.map(String::from), activation_strategy: strategy.map(String::from) }
    }

    const DST: &str = "migration-destination";
    const SRC: &str = "migration-source";
    const PHASE: &str = "migration-phase";
    const STRAT: &str = "migration-activation-strategy";
    const RC: &str = REQUESTED_CHASSIS;
    const AS: &str = ACTIVATION_STRATEGY;

    type Case<'a> = (
        &'a str,
        Option<LspState>,
        LspState,
        Result<Option<(Option<&'a str>, Option<&'a str>, Cause)>, SkipReason>,
    );

    #[test]
    fn desired_table() {
        let cfg = PolicyConfig::default();
        let migrating_pre = row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[(DST, "hv2")]);
        let cases: Vec<Case> = vec![
            ("untagged", None, row(&[(RC, "hv1")], &[]), Ok(None)),
            ("empty dst tag", None, row(&[(RC, "hv1")], &[(DST, "  ")]), Ok(None)),
            (
                "start from rc",
                None,
                row(&[(RC, "hv1")], &[(DST, "hv2")]),
                Ok(Some((Some("hv1,hv2"), Some("rarp"), Cause::Started))),
            ),
            (
                "start trims",
                None,
                row(&[(RC, " hv1 ,x")], &[(DST, " hv2 ")]),
                Ok(Some((Some("hv1,hv2"), Some("rarp"), Cause::Started))),
            ),
            (
                "source tag wins",
                None,
                row(&[(RC, "hv9")], &[(DST, "hv2"), (SRC, "hv1")]),
                Ok(Some((Some("hv1,hv2"), Some("rarp"), Cause::Started))),
            ),
            (
                "empty source tag ignored",
                None,
                row(&[(RC, "hv1")], &[(DST, "hv2"), (SRC, "")]),
                Ok(Some((Some("hv1,hv2"), Some("rarp"), Cause::Started))),
            ),
            (
                "pre-state rc is the source once migrating",
                Some(migrating_pre.clone()),
                row(&[(RC, "hv7")], &[(DST, "hv2")]),
                Ok(Some((Some("hv1,hv2"), Some("rarp"), Cause::Reasserted))),
            ),
            (
                "post rc when pre untagged",
                Some(row(&[(RC, "hv5")], &[])),
                row(&[(RC, "hv1")], &[(DST, "hv2")]),
                Ok(Some((Some("hv1,hv2"), Some("rarp"), Cause::Started))),
            ),
            (
                "pre rc when pre untagged and post unchanged",
                Some(row(&[(RC, "hv1")], &[])),
                row(&[(RC, "hv1")], &[(DST, "hv2")]),
                Ok(Some((Some("hv1,hv2"), Some("rarp"), Cause::Started))),
            ),
            (
                "new destination is a start",
                Some(migrating_pre.clone()),
                row(&[(RC, "hv1,hv2")], &[(DST, "hv3")]),
                Ok(Some((Some("hv1,hv3"), Some("rarp"), Cause::Started))),
            ),
            (
                "kubevirt phase is in progress",
                None,
                row(&[(RC, "hv1")], &[(DST, "hv2"), (PHASE, "Scheduling")]),
                Ok(Some((Some("hv1,hv2"), Some("rarp"), Cause::Started))),
            ),
            (
                "override strategy",
                None,
                row(&[(RC, "hv1")], &[(DST, "hv2"), (STRAT, " garp ")]),
                Ok(Some((Some("hv1,hv2"), Some("garp"), Cause::Started))),
            ),
            (
                "override none",
                None,
                row(&[(RC, "hv1")], &[(DST, "hv2"), (STRAT, "NONE")]),
                Ok(Some((Some("hv1,hv2"), None, Cause::Started))),
            ),
            (
                "override empty",
                None,
                row(&[(RC, "hv1")], &[(DST, "hv2"), (STRAT, "")]),
                Ok(Some((Some("hv1,hv2"), None, Cause::Started))),
            ),
            (
                "succeeded",
                Some(migrating_pre.clone()),
                row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[(DST, "hv2"), (PHASE, " Succeeded ")]),
                Ok(Some((Some("hv2"), None, Cause::Succeeded))),
            ),
            (
                "completed",
                None,
                row(&[(RC, "hv2")], &[(DST, "hv2"), (PHASE, "completed")]),
                Ok(Some((Some("hv2"), None, Cause::Succeeded))),
            ),
            (
                "succeeded needs no source",
                None,
                row(&[], &[(DST, "hv2"), (PHASE, "succeeded")]),
                Ok(Some((Some("hv2"), None, Cause::Succeeded))),
            ),
            (
                "failed",
                Some(migrating_pre.clone()),
                row(&[(RC, "hv1,hv2")], &[(DST, "hv2"), (PHASE, "FAILED")]),
                Ok(Some((Some("hv1"), None, Cause::Failed))),
            ),
            (
                "aborted phase",
                None,
                row(&[(RC, "hv1,hv2")], &[(DST, "hv2"), (PHASE, "aborted")]),
                Ok(Some((Some("hv1"), None, Cause::Failed))),
            ),
            (
                "same phase again is a reassert",
                Some(row(&[(RC, "hv2")], &[(DST, "hv2"), (PHASE, "succeeded")])),
                row(&[], &[(DST, "hv2"), (PHASE, "Succeeded")]),
                Ok(Some((Some("hv2"), None, Cause::Reasserted))),
            ),
            (
                "abort",
                Some(migrating_pre.clone()),
                row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[]),
                Ok(Some((Some("hv1"), None, Cause::Aborted))),
            ),
            (
                "abort with source tag",
                Some(row(&[(RC, "hv1,hv2")], &[(DST, "hv2"), (SRC, "hv1")])),
                row(&[(RC, "hv1,hv2")], &[(SRC, "hv1")]),
                Ok(Some((Some("hv1"), None, Cause::Aborted))),
            ),
            (
                "no abort when writer changed rc",
                Some(migrating_pre.clone()),
                row(&[(RC, "hv2")], &[]),
                Ok(None),
            ),
            (
                // An earlier write set it during the migration, its fix not made yet.
                "abort over a requested-chassis not reasserted yet",
                Some(row(&[(RC, "hv7")], &[(DST, "hv2"), (SRC, "hv1")])),
                row(&[(RC, "hv7")], &[(SRC, "hv1")]),
                Ok(Some((Some("hv1"), None, Cause::Aborted))),
            ),
            (
                "abort with requested-chassis already the source: the strategy goes",
                Some(row(&[(RC, "hv1"), (AS, "rarp")], &[(DST, "hv2"), (SRC, "hv1")])),
                row(&[(RC, "hv1"), (AS, "rarp")], &[(SRC, "hv1")]),
                Ok(Some((Some("hv1"), None, Cause::Aborted))),
            ),
            (
                "no abort after success",
                Some(row(&[(RC, "hv1,hv2")], &[(DST, "hv2"), (PHASE, "succeeded")])),
                row(&[(RC, "hv1,hv2")], &[]),
                Ok(None),
            ),
            ("no abort without pre", None, row(&[(RC, "hv1,hv2")], &[]), Ok(None)),
            (
                "comma in destination",
                None,
                row(&[(RC, "hv1")], &[(DST, "hv2,hv3")]),
                Err(SkipReason::CommaInName),
            ),
            (
                "comma in source tag",
                None,
                row(&[(RC, "hv1")], &[(DST, "hv2"), (SRC, "a,b")]),
                Err(SkipReason::CommaInName),
            ),
            ("same chassis", None, row(&[(RC, "hv2")], &[(DST, "hv2")]), Err(SkipReason::SameChassis)),
            (
                "same chassis on failure",
                None,
                row(&[(RC, "hv2")], &[(DST, "hv2"), (PHASE, "failed")]),
                Err(SkipReason::SameChassis),
            ),
            ("no source", None, row(&[], &[(DST, "hv2")]), Err(SkipReason::NoSource)),
            ("empty first entry", None, row(&[(RC, ",hv1")], &[(DST, "hv2")]), Err(SkipReason::NoSource)),
            (
                "no source on failure",
                None,
                row(&[(AS, "rarp")], &[(DST, "hv2"), (PHASE, "failed")]),
                Err(SkipReason::NoSource),
            ),
        ];
        for (name, pre, post, want) in cases {
            let got = desired(pre.as_ref(), &post, &cfg);
            let want = want.map(|o| o.map(|(rc, s, cause)| Desired { opts: opts(rc, s), cause }));
            assert_eq!(got, want, "case {name}");
        }
    }

    #[test]
    fn configurable_keys_and_default_strategy() {
        let cfg = PolicyConfig {
            destination_key: "dst".into(),
            default_strategy: "none".into(),
            ..PolicyConfig::default()
        };
        let post = row(&[(RC, "hv1")], &[("dst", "hv2"), (DST, "ignored")]);
        let got = desired(None, &post, &cfg).expect("not skipped").expect("migrating");
        assert_eq!(got.opts, opts(Some("hv1,hv2"), None));
        assert_eq!(desired(None, &row(&[(RC, "hv1")], &[(DST, "hv2")]), &cfg), Ok(None));
    }

    /// A memory with one finalized migration (p1 → hv2) and one remembered source (p1 → hv2
    /// from hv1).
    struct Remembers {
        finalized: bool,
        source: Option<&'static str>,
    }

    impl Memory for Remembers {
        fn finalized(&self, port: &str, dst: &str) -> bool {
            self.finalized && port == "p1" && dst == "hv2"
        }
        fn source(&self, port: &str, dst: &str, _finished: bool) -> Option<String> {
            self.source.filter(|_| port == "p1" && dst == "hv2").map(String::from)
        }
    }

    fn fix(pre: Pre, r: &LspState, mem: &dyn Memory) -> Fix {
        plan_reconcile(pre, r, &PolicyConfig::default(), mem).expect("not skipped").expect("needs a fix")
    }

    #[test]
    fn reconcile_is_conditional() {
        let r = row(&[(RC, "hv1"), ("foo", "bar")], &[(DST, "hv2")]);
        let Fix { ops, change } = fix(Pre::Unseen, &r, &Forgetful);
        assert_eq!(change.cause, Cause::Started);
        assert_eq!(change.before, opts(Some("hv1"), None));
        assert_eq!(change.after, opts(Some("hv1,hv2"), Some("rarp")));
        let where_ = json!([["_uuid", "==", ["uuid", "u1"]]]);
        assert_eq!(
            ops,
            [
                json!({"op": "wait", "table": "Logical_Switch_Port", "timeout": 0, "where": where_,
                    "columns": ["options", "external_ids"], "until": "==",
                    "rows": [{"options": ["map", [["foo", "bar"], ["requested-chassis", "hv1"]]],
                              "external_ids": ["map", [["migration-destination", "hv2"]]]}]}),
                json!({"op": "mutate", "table": "Logical_Switch_Port", "where": where_,
                    "mutations": [["options", "delete", ["set", ["requested-chassis", "activation-strategy"]]],
                                  ["options", "insert", ["map", [["requested-chassis", "hv1,hv2"], ["activation-strategy", "rarp"]]]]]}),
            ]
        );
    }

    #[test]
    fn reconcile_leaves_alone() {
        let cfg = PolicyConfig::default();
        let cases = [
            ("already right", row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[(DST, "hv2")]), Ok(None)),
            ("untagged", row(&[(RC, "hv1")], &[]), Ok(None)),
            ("skip", row(&[(RC, "hv2")], &[(DST, "hv2")]), Err(SkipReason::SameChassis)),
            // No pre-state: a removed destination tag is not an abort for the reconciler.
            ("no abort", row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[]), Ok(None)),
            ("done", row(&[(RC, "hv2")], &[(DST, "hv2"), (PHASE, "succeeded")]), Ok(None)),
            ("rolled back", row(&[(RC, "hv1")], &[(DST, "hv2"), (PHASE, "failed")]), Ok(None)),
            ("source lost", row(&[("foo", "bar")], &[(DST, "hv2")]), Err(SkipReason::NoSource)),
            (
                "moved after success",
                row(&[(RC, "hv3")], &[(DST, "hv2"), (PHASE, "succeeded")]),
                Err(SkipReason::OperatorOverride),
            ),
        ];
        for (name, r, want) in cases {
            assert_eq!(plan_reconcile(Pre::Unseen, &r, &cfg, &Forgetful), want, "{name}");
        }
        let mut no_uuid = row(&[(RC, "hv1")], &[(DST, "hv2")]);
        no_uuid.uuid.clear();
        assert_eq!(plan_reconcile(Pre::Unseen, &no_uuid, &cfg, &Forgetful), Ok(None));
    }

    #[test]
    fn finalized_migrations_get_the_succeeded_options() {
        let cfg = PolicyConfig::default();
        let mem = Remembers { finalized: true, source: None };
        let migrating = row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[(DST, "hv2")]);
        let got = desired_with(Pre::Unseen, &migrating, &cfg, &mem).expect("ok").expect("migrating");
        assert_eq!(got.opts, opts(Some("hv2"), None));
        assert_eq!(got.cause, Cause::Finalized);
        // The proxy's own finalize write: the same row before and after, cause finalized.
        let Fix { change, .. } = fix(Pre::Known(&migrating), &migrating, &mem);
        assert_eq!((change.after, change.cause), (opts(Some("hv2"), None), Cause::Finalized));
        // Once finalized, a write that brings back src,dst is a reassert.
        let finalized = row(&[(RC, "hv2")], &[(DST, "hv2")]);
        let got =
            desired_with(Pre::Known(&finalized), &migrating, &cfg, &mem).expect("ok").expect("migrating");
        assert_eq!((got.opts, got.cause), (opts(Some("hv2"), None), Cause::Reasserted));
        // another destination is not finalized
        let other = row(&[(RC, "hv1,hv3"), (AS, "rarp")], &[(DST, "hv3")]);
        let got = desired_with(Pre::Unseen, &other, &cfg, &mem).expect("ok").expect("migrating");
        assert_eq!(got.opts, opts(Some("hv1,hv3"), Some("rarp")));
        // the CMS's own verdict still wins
        let failed = row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[(DST, "hv2"), (PHASE, "failed")]);
        let got = desired_with(Pre::Unseen, &failed, &cfg, &mem).expect("ok").expect("migrating");
        assert_eq!(got.opts, opts(Some("hv1"), None));
        // even once finalized (requested-chassis=dst): the source comes from the memory
        let mem = Remembers { finalized: true, source: Some("hv1") };
        let failed_after = row(&[(RC, "hv2")], &[(DST, "hv2"), (PHASE, "failed")]);
        let got =
            desired_with(Pre::Known(&finalized), &failed_after, &cfg, &mem).expect("ok").expect("migrating");
        assert_eq!((got.opts, got.cause), (opts(Some("hv1"), None), Cause::Failed));
    }

    #[test]
    fn a_new_migration_to_a_finalized_destination_is_not_finalized() {
        let cfg = PolicyConfig::default();
        // The memory still holds the last migration as finalized (the monitor is one round
        // trip behind the CMS's writes): only this migration's own state may use it.
        let mem = Remembers { finalized: true, source: None };
        let retry = row(&[(RC, "hv1")], &[(DST, "hv2")]);
        let after_rollback = row(&[(RC, "hv1")], &[(DST, "hv2"), (PHASE, "failed")]);
        let untagged = row(&[(RC, "hv1")], &[]);
        for (name, pre) in [
            ("after a rollback", Pre::Known(&after_rollback)),
            ("after tags cleared", Pre::Known(&untagged)),
            ("inserted", Pre::Inserted),
        ] {
            let got = desired_with(pre, &retry, &cfg, &mem).expect("ok").expect("migrating");
            assert_eq!(
                (got.opts, got.cause),
                (opts(Some("hv1,hv2"), Some("rarp")), Cause::Started),
                "{name}"
            );
        }
    }

    #[test]
    fn the_remembered_source_comes_before_the_rows() {
        let cfg = PolicyConfig::default();
        let mem = Remembers { finalized: false, source: Some("hv1") };
        // An unaware writer left requested-chassis=hv9 around the proxy; a client transaction
        // planned on that cache row must not take hv9 for the source.
        let pre = row(&[(RC, "hv9")], &[(DST, "hv2")]);
        let post = row(&[(RC, "hv9"), ("x", "1")], &[(DST, "hv2")]);
        let got = desired_with(Pre::Known(&pre), &post, &cfg, &mem).expect("ok").expect("migrating");
        assert_eq!(got.opts, opts(Some("hv1,hv2"), Some("rarp")));
        // The source lost from every row: the memory still has it (the Southbound gave it).
        let lost = row(&[("foo", "bar")], &[(DST, "hv2")]);
        let Fix { change, .. } = fix(Pre::Unseen, &lost, &mem);
        assert_eq!(change.after, opts(Some("hv1,hv2"), Some("rarp")));
        // The source tag still comes first.
        let tagged = row(&[], &[(DST, "hv2"), (SRC, "hv5")]);
        let got = desired_with(Pre::Unseen, &tagged, &cfg, &mem).expect("ok").expect("migrating");
        assert_eq!(got.opts, opts(Some("hv5,hv2"), Some("rarp")));
        // An abort uses it too.
        let migrating = row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[(DST, "hv2")]);
        let aborted = row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[]);
        let got = desired_with(Pre::Known(&migrating), &aborted, &cfg, &mem).expect("ok").expect("abort");
        assert_eq!((got.opts, got.cause), (opts(Some("hv1"), None), Cause::Aborted));
    }

    #[test]
    fn an_operator_may_move_a_port_whose_migration_finished() {
        let cfg = PolicyConfig::default();
        let done = row(&[(RC, "hv2")], &[(DST, "hv2"), (PHASE, "succeeded")]);
        let rolled_back = row(&[(RC, "hv1")], &[(DST, "hv2"), (SRC, "hv1"), (PHASE, "failed")]);
        let in_progress = row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[(DST, "hv2"), (SRC, "hv1")]);
        let with = |base: &LspState, options: &[(&str, &str)]| LspState {
            options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..base.clone()
        };
        type Want<'a> = Result<Option<(Option<&'a str>, Option<&'a str>)>, SkipReason>;
        let cases: Vec<(&str, Pre, LspState, Want)> = vec![
            (
                "evacuation after success",
                Pre::Known(&done),
                with(&done, &[(RC, "hv3")]),
                Err(SkipReason::OperatorOverride),
            ),
            (
                "evacuation after a rollback",
                Pre::Known(&rolled_back),
                with(&rolled_back, &[(RC, " hv3 ")]),
                Err(SkipReason::OperatorOverride),
            ),
            (
                "seen first, moved",
                Pre::Unseen,
                with(&done, &[(RC, "hv3")]),
                Err(SkipReason::OperatorOverride),
            ),
            // Not a choice of a chassis: the final state comes back.
            (
                "requested-chassis dropped",
                Pre::Known(&done),
                with(&done, &[("foo", "bar")]),
                Ok(Some((Some("hv2"), None))),
            ),
            (
                "both chassis again",
                Pre::Known(&done),
                with(&done, &[(RC, "hv1,hv2")]),
                Ok(Some((Some("hv2"), None))),
            ),
            (
                "strategy added",
                Pre::Known(&done),
                with(&done, &[(RC, "hv2"), (AS, "rarp")]),
                Ok(Some((Some("hv2"), None))),
            ),
            // The phase reached in this very write: the final state, whatever else it says.
            (
                "success written with a stale chassis",
                Pre::Known(&in_progress),
                {
                    let mut r = with(&done, &[(RC, "hv1")]);
                    r.external_ids.insert(SRC.into(), "hv1".into());
                    r
                },
                Ok(Some((Some("hv2"), None))),
            ),
            ("inserted finished", Pre::Inserted, with(&done, &[(RC, "hv3")]), Ok(Some((Some("hv2"), None)))),
            // In progress: never the writer's.
            (
                "moved while in progress",
                Pre::Known(&in_progress),
                with(&in_progress, &[(RC, "hv3")]),
                Ok(Some((Some("hv1,hv2"), Some("rarp")))),
            ),
        ];
        for (name, pre, post, want) in cases {
            let got = desired_with(pre, &post, &cfg, &Forgetful).map(|d| d.map(|d| d.opts));
            let want = want.map(|o| o.map(|(rc, s)| opts(rc, s)));
            assert_eq!(got, want, "case {name}");
        }
    }

    #[test]
    fn a_final_state_still_due_is_made_without_the_transition() {
        struct Due;
        impl Memory for Due {
            fn due(&self, port: &str) -> Option<(Option<String>, String, Cause)> {
                (port == "p1").then(|| (Some("hv1,hv2".into()), "hv1".into(), Cause::Aborted))
            }
        }
        let cfg = PolicyConfig::default();
        let untagged = row(&[(RC, "hv1,hv2"), (AS, "rarp"), ("own", "x")], &[("g", "1")]);
        for pre in [Pre::Known(&untagged), Pre::Unseen] {
            let got = desired_with(pre, &untagged, &cfg, &Due).expect("ok").expect("due");
            assert_eq!((got.opts, got.cause), (opts(Some("hv1"), None), Cause::Aborted));
        }
        // Options moved on: nothing due.
        let moved = row(&[(RC, "hv3")], &[]);
        assert_eq!(desired_with(Pre::Unseen, &moved, &cfg, &Due), Ok(None));
        // Nothing remembered: an untagged port is not the policy's business.
        assert_eq!(desired_with(Pre::Unseen, &untagged, &cfg, &Forgetful), Ok(None));
        // A success still due is not taken for an operator's choice of the stale chassis.
        struct Success;
        impl Memory for Success {
            fn due(&self, _: &str) -> Option<(Option<String>, String, Cause)> {
                Some((Some("hv0".into()), "hv2".into(), Cause::Succeeded))
            }
        }
        let done = row(&[(RC, "hv0")], &[(DST, "hv2"), (PHASE, "succeeded")]);
        let got = desired_with(Pre::Known(&done), &done, &cfg, &Success).expect("ok").expect("due");
        assert_eq!(got.opts, opts(Some("hv2"), None));
        assert_eq!(
            desired_with(Pre::Known(&done), &done, &cfg, &Forgetful),
            Err(SkipReason::OperatorOverride)
        );
    }

    #[test]
    fn reconcile_with_the_monitors_pre_state() {
        // A bypassing unaware writer replaced requested-chassis on a migrating port: the
        // source comes from the state before that write, not from the overwritten value.
        let pre = row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[(DST, "hv2")]);
        let post = row(&[(RC, "hv9")], &[(DST, "hv2")]);
        let Fix { change, .. } = fix(Pre::Known(&pre), &post, &Forgetful);
        assert_eq!(change.after, opts(Some("hv1,hv2"), Some("rarp")));
        // The destination tag removed around the proxy while in progress: an abort.
        let aborted = row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[]);
        let Fix { change, .. } = fix(Pre::Known(&pre), &aborted, &Forgetful);
        assert_eq!(change.after, opts(Some("hv1"), None));
        assert_eq!(change.cause, Cause::Aborted);
    }
}
