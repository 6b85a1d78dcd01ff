//! The per-row decision: which `requested-chassis` / `activation-strategy` a port should have.

use serde_json::{json, Value};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    InProgress,
    Succeeded,
    Failed,
}

/// The migration tags of one row, trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tags<'a> {
    dst: Option<&'a str>,
    src: Option<&'a str>,
    phase: Phase,
    /// `Some(None)`: the override asks for no strategy.
    strategy: Option<Option<&'a str>>,
}

fn trimmed(value: Option<&String>) -> Option<&str> {
    value.map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// Empty or `none` (any case) means "no strategy".
fn strategy_value(raw: &str) -> Option<&str> {
    let s = raw.trim();
    (!s.is_empty() && !s.eq_ignore_ascii_case("none")).then_some(s)
}

impl<'a> Tags<'a> {
    fn read(ext: &'a StrMap, cfg: &PolicyConfig) -> Tags<'a> {
        let is = |p: &str, names: [&str; 2]| names.iter().any(|n| p.eq_ignore_ascii_case(n));
        let phase = match trimmed(ext.get(&cfg.phase_key)) {
            Some(p) if is(p, ["succeeded", "completed"]) => Phase::Succeeded,
            Some(p) if is(p, ["failed", "aborted"]) => Phase::Failed,
            _ => Phase::InProgress,
        };
        Tags {
            dst: trimmed(ext.get(&cfg.destination_key)),
            src: trimmed(ext.get(&cfg.source_key)),
            phase,
            strategy: ext.get(&cfg.strategy_key).map(|s| strategy_value(s)),
        }
    }
}

/// The first entry of `requested-chassis`, trimmed, if non-empty.
fn first_chassis(options: &StrMap) -> Option<&str> {
    options
        .get(REQUESTED_CHASSIS)
        .and_then(|rc| rc.split(',').next())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn check_name(name: &str) -> Result<&str, SkipReason> {
    if name.contains(',') {
        Err(SkipReason::CommaInName)
    } else {
        Ok(name)
    }
}

/// The source chassis: the source tag; else, if the port was already migrating before this
/// transaction, the first entry of its pre-state `requested-chassis`; else the first entry of the
/// writer's post-state `requested-chassis` (also the fallback when the pre-state has none).
fn source<'a>(
    tags: &Tags<'a>,
    pre: Option<(&'a LspState, &Tags<'a>)>,
    post: &'a LspState,
) -> Result<&'a str, SkipReason> {
    let from_pre = pre.filter(|(_, t)| t.dst.is_some()).and_then(|(p, _)| first_chassis(&p.options));
    let src = tags.src.or(from_pre).or_else(|| first_chassis(&post.options)).ok_or(SkipReason::NoSource)?;
    check_name(src)
}

/// The per-row decision, from the pre-transaction state (`None` for a row inserted by the
/// transaction, or when reconciling) and the state the writer's transaction leaves.
///
/// `Ok(None)`: not the policy's business (no tags, and not an abort). `Ok(Some(d))`: the port
/// should have exactly `d.opts` (which may already be the case). `Err`: a tagged port left alone.
pub fn desired(
    pre: Option<&LspState>,
    post: &LspState,
    cfg: &PolicyConfig,
) -> Result<Option<Desired>, SkipReason> {
    desired_with(pre, post, cfg, &|_, _| false)
}

/// `desired`, where `finalized(port, destination)` says the proxy has finished an in-progress
/// migration itself (see `LspView::finalized`): the port then gets the succeeded options.
pub fn desired_with(
    pre: Option<&LspState>,
    post: &LspState,
    cfg: &PolicyConfig,
    finalized: &dyn Fn(&str, &str) -> bool,
) -> Result<Option<Desired>, SkipReason> {
    let tags = Tags::read(&post.external_ids, cfg);
    let Some(dst) = tags.dst else {
        return Ok(pre.and_then(|pre| abort(pre, post, cfg)));
    };
    let dst = check_name(dst)?;
    let pre_tags = pre.map(|p| (p, Tags::read(&p.external_ids, cfg)));
    let pre_ref = pre_tags.as_ref().map(|(p, t)| (*p, t));
    let same_state = pre_tags.as_ref().is_some_and(|(_, t)| t.dst == Some(dst) && t.phase == tags.phase);
    let (opts, cause) = match tags.phase {
        Phase::InProgress if finalized(&post.name, dst) => {
            (Opts { requested_chassis: Some(dst.to_owned()), activation_strategy: None }, Cause::Finalized)
        }
        Phase::InProgress => {
            let src = source(&tags, pre_ref, post)?;
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
            (Opts { requested_chassis: Some(dst.to_owned()), activation_strategy: None }, Cause::Succeeded)
        }
        Phase::Failed => {
            let src = source(&tags, pre_ref, post)?;
            if src == dst {
                return Err(SkipReason::SameChassis);
            }
            (Opts { requested_chassis: Some(src.to_owned()), activation_strategy: None }, Cause::Failed)
        }
    };
    let cause = if same_state { Cause::Reasserted } else { cause };
    Ok(Some(Desired { opts, cause }))
}

/// The destination tag went away while the migration was in progress and the options are still
/// the proxy's `src,dst`: roll back to the source.
fn abort(pre: &LspState, post: &LspState, cfg: &PolicyConfig) -> Option<Desired> {
    let tags = Tags::read(&pre.external_ids, cfg);
    if tags.phase != Phase::InProgress {
        return None;
    }
    let dst = check_name(tags.dst?).ok()?;
    let src = source(&tags, None, pre).ok()?;
    if src == dst || post.options.get(REQUESTED_CHASSIS) != Some(&format!("{src},{dst}")) {
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

/// A fix-up for a row seen on the monitor (written by something that bypassed the proxy):
/// `wait` that options and external_ids are still exactly as seen, then `mutate` the two keys,
/// then a `comment`. Without a database name. `None`: nothing to do, or a port left alone.
/// `pre` is the row as the monitor showed it before this change, when known: it gives the
/// source of a migration in progress and makes aborts visible, as for a client transaction.
pub fn plan_reconcile(
    pre: Option<&LspState>,
    row: &LspState,
    cfg: &PolicyConfig,
    finalized: &dyn Fn(&str, &str) -> bool,
) -> Option<(Vec<Value>, Change)> {
    let want = desired_with(pre, row, cfg, finalized).ok().flatten()?;
    let before = Opts::of(&row.options);
    if before == want.opts || row.uuid.is_empty() {
        return None;
    }
    let where_ = where_uuid(&UuidRef::Uuid(row.uuid.clone()));
    let as_pairs = |m: &StrMap| map_json(m.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let port = port_label(row, None);
    let ops = vec![
        json!({
            "op": "wait", "table": LSP_TABLE, "timeout": 0, "where": where_.clone(),
            "columns": ["options", "external_ids"], "until": "==",
            "rows": [{"options": as_pairs(&row.options), "external_ids": as_pairs(&row.external_ids)}],
        }),
        mutate_op(where_, &want.opts),
        json!({"op": "comment", "comment": format!("ovn-nb-proxy: reconcile {port}")}),
    ];
    Some((ops, Change { port, before, after: want.opts, cause: want.cause }))
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

    #[test]
    fn reconcile_is_conditional() {
        let cfg = PolicyConfig::default();
        let r = row(&[(RC, "hv1"), ("foo", "bar")], &[(DST, "hv2")]);
        let (ops, change) = plan_reconcile(None, &r, &cfg, &|_, _| false).expect("needs a fix");
        assert_eq!(change.cause, Cause::Started);
        assert_eq!(change.before, opts(Some("hv1"), None));
        assert_eq!(change.after, opts(Some("hv1,hv2"), Some("rarp")));
        let where_ = json!([["_uuid", "==", ["uuid", "u1"]]]);
        assert_eq!(
            ops,
            vec![
                json!({"op": "wait", "table": "Logical_Switch_Port", "timeout": 0, "where": where_,
                    "columns": ["options", "external_ids"], "until": "==",
                    "rows": [{"options": ["map", [["foo", "bar"], ["requested-chassis", "hv1"]]],
                              "external_ids": ["map", [["migration-destination", "hv2"]]]}]}),
                json!({"op": "mutate", "table": "Logical_Switch_Port", "where": where_,
                    "mutations": [["options", "delete", ["set", ["requested-chassis", "activation-strategy"]]],
                                  ["options", "insert", ["map", [["requested-chassis", "hv1,hv2"], ["activation-strategy", "rarp"]]]]]}),
                json!({"op": "comment", "comment": "ovn-nb-proxy: reconcile p1"}),
            ]
        );
    }

    #[test]
    fn reconcile_leaves_alone() {
        let cfg = PolicyConfig::default();
        let cases = [
            ("already right", row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[(DST, "hv2")])),
            ("untagged", row(&[(RC, "hv1")], &[])),
            ("skip", row(&[(RC, "hv2")], &[(DST, "hv2")])),
            // No pre-state: a removed destination tag is not an abort for the reconciler.
            ("no abort", row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[])),
            ("done", row(&[(RC, "hv2")], &[(DST, "hv2"), (PHASE, "succeeded")])),
            ("rolled back", row(&[(RC, "hv1")], &[(DST, "hv2"), (PHASE, "failed")])),
        ];
        for (name, r) in cases {
            assert_eq!(plan_reconcile(None, &r, &cfg, &|_, _| false), None, "{name}");
        }
        let mut no_uuid = row(&[(RC, "hv1")], &[(DST, "hv2")]);
        no_uuid.uuid.clear();
        assert_eq!(plan_reconcile(None, &no_uuid, &cfg, &|_, _| false), None);
    }

    #[test]
    fn finalized_migrations_get_the_succeeded_options() {
        let cfg = PolicyConfig::default();
        let migrating = row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[(DST, "hv2")]);
        let fin = |p: &str, d: &str| p == "p1" && d == "hv2";
        let got = desired_with(None, &migrating, &cfg, &fin).expect("ok").expect("migrating");
        assert_eq!(got.opts, opts(Some("hv2"), None));
        assert_eq!(got.cause, Cause::Finalized);
        // another destination is not finalized
        let other = row(&[(RC, "hv1,hv3"), (AS, "rarp")], &[(DST, "hv3")]);
        let got = desired_with(None, &other, &cfg, &fin).expect("ok").expect("migrating");
        assert_eq!(got.opts, opts(Some("hv1,hv3"), Some("rarp")));
        // the CMS's own verdict still wins
        let failed = row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[(DST, "hv2"), (PHASE, "failed")]);
        let got = desired_with(None, &failed, &cfg, &fin).expect("ok").expect("migrating");
        assert_eq!(got.opts, opts(Some("hv1"), None));
        // and the reconciler applies it
        let (_, change) = plan_reconcile(None, &migrating, &cfg, &fin).expect("finalize");
        assert_eq!(change.after, opts(Some("hv2"), None));
    }

    #[test]
    fn reconcile_with_the_monitors_pre_state() {
        let cfg = PolicyConfig::default();
        // A bypassing unaware writer replaced requested-chassis on a migrating port: the
        // source comes from the state before that write, not from the overwritten value.
        let pre = row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[(DST, "hv2")]);
        let post = row(&[(RC, "hv9")], &[(DST, "hv2")]);
        let (_, change) = plan_reconcile(Some(&pre), &post, &cfg, &|_, _| false).expect("fix");
        assert_eq!(change.after, opts(Some("hv1,hv2"), Some("rarp")));
        // The destination tag removed around the proxy while in progress: an abort.
        let aborted = row(&[(RC, "hv1,hv2"), (AS, "rarp")], &[]);
        let (_, change) = plan_reconcile(Some(&pre), &aborted, &cfg, &|_, _| false).expect("abort");
        assert_eq!(change.after, opts(Some("hv1"), None));
        assert_eq!(change.cause, Cause::Aborted);
    }
}
