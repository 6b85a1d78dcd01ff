//! Pure glue between the wire and the policy: which messages are looked at, how a rewritten
//! request is re-serialised, and how the reply to it is trimmed back to the client's shape.
//! No I/O: the session calls these with bytes and forwards what they return.
//!
//! Only `transact` requests that mention `Logical_Switch_Port` are parsed; everything else is
//! forwarded as the bytes that came. A rewritten request keeps every member of the client's
//! envelope (and their order); only `params` changes. Nothing is added.

use std::collections::HashMap;

use bytes::Bytes;
use memchr::memmem;
use serde_json::Value;

use crate::cache::LspCache;
use crate::policy::{
    may_spell_destination_key, plan_transact_raw, Change, LspState, LspView, Memory, Opts, Plan,
    PolicyConfig, Rewrite, SkipReason, Trim,
};
use crate::timeline::Timelines;
use crate::wire::{id_key, Envelope, Kind};

/// What the session remembers about a rewritten request until its reply comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Set when the proxy appended ops: the reply is trimmed back.
    pub trim: Option<Trim>,
    /// The changes the rewrite made: reported (audit line, counter) once the server committed
    /// them, or said to be refused.
    pub changes: Vec<Change>,
    /// Per appended op, the index in `changes` of the change it makes.
    pub appended: Vec<usize>,
}

/// Replies awaited, by canonical id.
pub type PendingMap = HashMap<String, Pending>;

/// What the server made of a rewritten transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed; `void` lists the changes (indices in `Pending::changes`) whose appended op
    /// matched no row: the row was not as the proxy's cache said, so that change was not made
    /// (the reconciler decides from the row's real state).
    Committed { void: Vec<usize> },
    /// The error the server gave (an op's, the commit's, or the JSON-RPC one).
    Refused(String),
}

/// The reply to a rewritten request: the bytes to send instead (when trimmed), what was
/// pending, and the outcome.
#[derive(Debug)]
pub struct Answered {
    pub bytes: Option<Bytes>,
    pub pending: Pending,
    pub outcome: Outcome,
}

/// The policy's view of the ports: the cache, and the timelines that remember each
/// migration's source and which migrations the proxy has finished itself (with finalize on
/// activation).
pub struct PortsView<'a> {
    pub cache: &'a LspCache,
    pub timelines: &'a Timelines,
    pub finalize: bool,
}

impl PortsView<'_> {
    /// Nothing migrates: the cache is synchronised, no port carries `cfg`'s destination tag, and
    /// no finished migration's final state is due. Then only a message naming the tag key can
    /// matter to the policy ([`must_plan`]).
    pub fn quiet(&self, cfg: &PolicyConfig) -> bool {
        self.cache.none_tagged(&cfg.destination_key) && !self.timelines.any_due()
    }
}

impl Memory for PortsView<'_> {
    fn finalized(&self, port: &str, destination: &str) -> bool {
        self.finalize && self.timelines.is_finalized(port, destination)
    }
    fn source(&self, port: &str, destination: &str, finished: bool) -> Option<String> {
        self.timelines.source_of(port, destination, finished)
    }
    fn due(&self, port: &str) -> Option<(Option<String>, String, crate::policy::Cause)> {
        self.timelines.due(port).map(|d| (d.stale, d.requested_chassis, d.cause))
    }
}

impl LspView for PortsView<'_> {
    fn by_uuid(&self, uuid: &str) -> Option<LspState> {
        self.cache.by_uuid(uuid)
    }
    fn by_name(&self, name: &str) -> Option<LspState> {
        self.cache.by_name(name)
    }
    fn all(&self) -> Vec<LspState> {
        self.cache.all()
    }
    fn size(&self) -> usize {
        self.cache.len()
    }
}

/// The two option keys as one log field: `requested-chassis=hv1,hv2 activation-strategy=rarp`
/// (`-` for an absent key).
pub fn show_opts(o: &Opts) -> String {
    format!(
        "requested-chassis={} activation-strategy={}",
        o.requested_chassis.as_deref().unwrap_or("-"),
        o.activation_strategy.as_deref().unwrap_or("-")
    )
}

/// Which kind of change an audit line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audit {
    /// In a client's transaction, committed by the server.
    Rewrite,
    /// The proxy's own conditional transaction, committed.
    Reconcile,
}

/// One structured log line per port the proxy changed (target `ovn_nb_proxy::audit`): port,
/// the two keys before and after, cause, client, dry run. Written once the server committed
/// the change (or, in a dry run, when it would have been sent).
pub fn audit(kind: Audit, c: &Change, client: &str, dry_run: bool) {
    let (before, after, cause) = (show_opts(&c.before), show_opts(&c.after), c.cause.as_str());
    match kind {
        Audit::Rewrite => tracing::info!(target: "ovn_nb_proxy::audit", port = %c.port, ?before, ?after,
            cause = %cause, client = %client, dry_run, "rewrite"),
        Audit::Reconcile => tracing::info!(target: "ovn_nb_proxy::audit", port = %c.port, ?before, ?after,
            cause = %cause, client = %client, dry_run, "reconcile"),
    }
}

/// A rewrite the server did not commit: the client's transaction failed (the change with it).
pub fn audit_refused(c: &Change, client: &str, error: &str) {
    let (before, after, cause) = (show_opts(&c.before), show_opts(&c.after), c.cause.as_str());
    tracing::info!(target: "ovn_nb_proxy::audit", port = %c.port, ?before, ?after, cause = %cause,
        client = %client, %error, "refused");
}

/// A change the proxy appended to a committed transaction that matched no row: the row was not
/// as the proxy's cache said (a write it had not seen yet), so the change was not made; the
/// reconciler decides from the row's real state.
pub fn audit_stale(c: &Change, client: &str) {
    let (before, after, cause) = (show_opts(&c.before), show_opts(&c.after), c.cause.as_str());
    tracing::info!(target: "ovn_nb_proxy::audit", port = %c.port, ?before, ?after, cause = %cause,
        client = %client, "stale");
}

/// A rewrite whose outcome the proxy never saw (the client closed, or cancelled, before the
/// reply): it may or may not have been committed; the reconciler looks at the port anyway.
pub fn audit_unconfirmed(c: &Change, client: &str) {
    let (before, after, cause) = (show_opts(&c.before), show_opts(&c.after), c.cause.as_str());
    tracing::info!(target: "ovn_nb_proxy::audit", port = %c.port, ?before, ?after, cause = %cause,
        client = %client, "unconfirmed");
}

/// A finished migration whose `requested-chassis` a writer set to a chassis of its own: the
/// proxy leaves it (the operator's choice stands).
pub fn audit_yield(port: &str, chosen: Option<&str>, client: &str) {
    let chosen = chosen.unwrap_or("-");
    tracing::info!(target: "ovn_nb_proxy::audit", port = %port, requested_chassis = %chosen,
        client = %client, "yield");
}

/// The log line for a tagged port the policy leaves alone, by reason.
pub fn skip_message(reason: SkipReason) -> &'static str {
    match reason {
        SkipReason::NoSource => {
            "the source of the migration is unknown (no source tag, no requested-chassis, and --sb-db shows none): port left alone"
        }
        SkipReason::CommaInName => "a chassis name contains a comma: port left alone",
        SkipReason::SameChassis => "source and destination are the same chassis: port left alone",
        SkipReason::UnresolvedWhere => {
            "an op whose where the policy cannot evaluate may write this port: left to the reconciler"
        }
        SkipReason::OperatorOverride => "the migration is finished; the writer's requested-chassis stands",
    }
}

/// Cheap test before any parsing: could this message be a `transact` on ports?
pub fn may_touch_ports(raw: &[u8]) -> bool {
    static TABLE: std::sync::LazyLock<memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memmem::Finder::new(b"Logical_Switch_Port"));
    static TRANSACT: std::sync::LazyLock<memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memmem::Finder::new(b"\"transact\""));
    TABLE.find(raw).is_some() && TRANSACT.find(raw).is_some()
}

/// Whether a message that may touch ports must be planned, when the port cache is synchronised,
/// no cached port carries the destination tag and no final state is due (`quiet`): only if its
/// bytes spell the destination tag key, or hold a JSON escape (which could spell it). Otherwise
/// no row the transaction leaves can be tagged, nor was one before it: the policy has nothing to
/// say (the policy fuzzer checks that the two answers agree), and the bytes go unparsed.
pub fn must_plan(raw: &[u8], cfg: &PolicyConfig, quiet: bool) -> bool {
    !quiet || may_spell_destination_key(raw, cfg)
}

/// Where a member's value lies in a message, as a byte range.
fn span(raw: &[u8], value: &serde_json::value::RawValue) -> Option<std::ops::Range<usize>> {
    let start = (value.get().as_ptr() as usize).checked_sub(raw.as_ptr() as usize)?;
    let end = start + value.get().len();
    (end <= raw.len()).then_some(start..end)
}

/// `raw` with the params at `at` rewritten by `rewrite`: every other byte of the message — the
/// other members, their order, the id exactly as written, whitespace — stays as it came, and so
/// does each op the rewrite does not replace.
fn splice_params(raw: &[u8], at: std::ops::Range<usize>, rewrite: &Rewrite) -> Option<Bytes> {
    let params = std::str::from_utf8(raw.get(at.clone())?).ok()?;
    let all: Vec<&serde_json::value::RawValue> = serde_json::from_str(params).ok()?;
    let (db, ops) = all.split_first()?;
    splice(raw, at, rewrite.splice(db.get(), ops)?)
}

/// `raw` with the bytes in `at` replaced by `text`.
fn splice(raw: &[u8], at: std::ops::Range<usize>, text: Vec<u8>) -> Option<Bytes> {
    let mut out = Vec::with_capacity(raw.len() - at.len() + text.len());
    out.extend_from_slice(&raw[..at.start]);
    out.extend_from_slice(&text);
    out.extend_from_slice(&raw[at.end..]);
    Some(Bytes::from(out))
}

/// A `transact` request the policy has looked at.
#[derive(Debug)]
pub struct Inspected {
    pub id: String,
    pub plan: Plan,
    raw: Bytes,
    params: std::ops::Range<usize>,
}

impl Inspected {
    /// The request to send upstream when the plan rewrites it (only `params` differs from
    /// what the client sent); `None` when the original bytes go as they are.
    pub fn rewritten(&self) -> Option<Bytes> {
        splice_params(&self.raw, self.params.clone(), self.plan.rewrite()?)
    }

    /// What to remember until the reply, when the plan rewrites the request.
    pub fn pending(&self) -> Option<(String, Pending)> {
        let p = &self.plan;
        let appended = p.rewrite()?.appended.iter().map(|a| a.change).collect();
        Some((self.id.clone(), Pending { trim: p.trim(), changes: p.changes.clone(), appended }))
    }
}

/// Runs the policy over a client message, if it is a `transact` request on ports.
pub fn inspect_request(raw: &Bytes, view: &dyn LspView, cfg: &PolicyConfig) -> Option<Inspected> {
    inspect_request_within(raw, view, cfg, usize::MAX).flatten()
}

/// `inspect_request`, unless the plan would scan more than `max_scan` ports (a `where` that
/// names no row, on a big table): then `None`, to be planned off the event loop.
pub fn inspect_request_within(
    raw: &Bytes,
    view: &dyn LspView,
    cfg: &PolicyConfig,
    max_scan: usize,
) -> Option<Option<Inspected>> {
    if !may_touch_ports(raw) {
        return Some(None);
    }
    let inspected = || -> Option<Result<Inspected, ()>> {
        let env = Envelope::parse(raw).ok()?;
        if env.method.as_deref() != Some("transact") || env.kind() != Kind::Request {
            return None;
        }
        let id = env.id_key()?;
        let raw_params = env.params?;
        // Each op's text, parsed only if it can matter. An op deeper than serde_json's default
        // limit is not read (no OVSDB op nests so deep, the server refuses it).
        let params: Vec<&serde_json::value::RawValue> = serde_json::from_str(raw_params.get()).ok()?;
        let at = span(raw, raw_params)?;
        let plan = match params.split_first() {
            Some((db, ops)) => plan_transact_raw(db, ops, view, cfg, max_scan),
            None => Some(Plan::forward()),
        };
        let Some(plan) = plan else { return Some(Err(())) };
        Some(Ok(Inspected { id, plan, raw: raw.clone(), params: at }))
    };
    match inspected() {
        None => Some(None),
        Some(Ok(ins)) => Some(Some(ins)),
        Some(Err(())) => None,
    }
}

/// The id a client's `cancel` notification gives up on: its reply will never come (OVS 3.1
/// drops the request silently), so the session forgets it.
pub fn cancelled_id(raw: &[u8]) -> Option<String> {
    memmem::find(raw, b"\"cancel\"")?;
    let env = Envelope::parse(raw).ok()?;
    if env.method.as_deref() != Some("cancel") || env.kind() != Kind::Notification {
        return None;
    }
    let params: Vec<&serde_json::value::RawValue> = serde_json::from_str(env.params?.get()).ok()?;
    id_key(params.first()?.get())
}

/// The first error in a `transact` result array (an op's, or the commit's extra element).
fn first_error(result: &Value) -> Option<String> {
    let list = result.as_array()?;
    list.iter().find_map(|r| {
        let e = r.get("error")?.as_str()?;
        Some(match r.get("details").and_then(Value::as_str) {
            Some(d) => format!("{e}: {d}"),
            None => e.to_string(),
        })
    })
}

/// If `raw` answers a pending request, removes it from `pending` and says what came of it, with
/// the reply's result trimmed to the client's ops when the proxy appended some (`bytes: None`:
/// forward the original bytes).
pub fn fix_reply(raw: &[u8], pending: &mut PendingMap) -> Option<Answered> {
    if pending.is_empty() {
        return None;
    }
    let env = Envelope::parse(raw).ok()?;
    if !matches!(env.kind(), Kind::Reply | Kind::Error) {
        return None;
    }
    let p = pending.remove(&env.id_key()?)?;
    if env.kind() == Kind::Error {
        // A JSON-RPC level error has no per-op results.
        let error = env.error.map(|e| e.get().to_string()).unwrap_or_default();
        return Some(Answered { bytes: None, pending: p, outcome: Outcome::Refused(error) });
    }
    let parsed = env.result.and_then(|r| Some((r, serde_json::from_str::<Value>(r.get()).ok()?)));
    let Some((raw_result, result)) = parsed else {
        return Some(Answered { bytes: None, pending: p, outcome: Outcome::Refused("no result".into()) });
    };
    let outcome = match first_error(&result) {
        Some(e) => Outcome::Refused(e),
        None => {
            let client_ops = p.trim.map_or(0, |t| t.client_ops);
            let void = p
                .appended
                .iter()
                .enumerate()
                .filter(|(j, _)| {
                    result.get(client_ops + j).and_then(|r| r.get("count")) == Some(&Value::from(0))
                })
                .map(|(_, &i)| i)
                .collect();
            Outcome::Committed { void }
        }
    };
    let bytes = p.trim.and_then(|trim| {
        let fixed = trim.apply(&result);
        splice(raw, span(raw, raw_result)?, serde_json::to_vec(&fixed).ok()?)
    });
    Some(Answered { bytes, pending: p, outcome })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{LspState, StaticView};

    fn tagged_port() -> StaticView {
        let mut row = LspState {
            uuid: "11111111-1111-1111-1111-111111111111".into(),
            name: "vm1".into(),
            ..Default::default()
        };
        row.options.insert("requested-chassis".into(), "hv1".into());
        StaticView::new(vec![row])
    }

    #[test]
    fn untouched_messages_are_not_parsed() {
        let view = tagged_port();
        let cfg = PolicyConfig::default();
        let b = |s: &'static [u8]| Bytes::from_static(s);
        assert!(inspect_request(&b(br#"{"method":"echo","params":[],"id":"echo"}"#), &view, &cfg).is_none());
        let other = br#"{"method":"transact","params":["OVN_Northbound",{"op":"insert","table":"Logical_Switch","row":{}}],"id":1}"#;
        assert!(inspect_request(&b(other), &view, &cfg).is_none());
        // a notification is not a request
        let notif = br#"{"method":"transact","params":["OVN_Northbound",{"op":"select","table":"Logical_Switch_Port","where":[]}],"id":null}"#;
        assert!(inspect_request(&b(notif), &view, &cfg).is_none());
    }

    #[test]
    fn a_tagging_update_is_rewritten_and_its_reply_trimmed() {
        let view = tagged_port();
        let cfg = PolicyConfig::default();
        // libovsdb-shaped: external_ids written whole, by name; the envelope has a numeric id
        let raw = Bytes::from_static(br#"{"method":"transact", "params":["OVN_Northbound",{"op":"update","table":"Logical_Switch_Port","row":{"external_ids":["map",[["migration-destination","hv2"]]]},"where":[["name","==","vm1"]]}],"id":18446744073709551616}"#);
        let ins = inspect_request(&raw, &view, &cfg).expect("inspected");
        let sent = ins.rewritten().expect("rewritten");
        let text = std::str::from_utf8(&sent).expect("utf8");
        assert!(text.starts_with(r#"{"method":"transact", "params":["OVN_Northbound","#), "{text}");
        assert!(
            text.ends_with(r#"],"id":18446744073709551616}"#),
            "the envelope stays byte for byte: {text}"
        );
        let out: Value = serde_json::from_slice(&sent).expect("json");
        let text = out.to_string();
        assert!(text.contains("hv1,hv2") && text.contains("rarp"), "{text}");
        let mut pending = PendingMap::new();
        let (id, p) = ins.pending().expect("a rewrite is awaited");
        assert_eq!(
            p.trim,
            Some(Trim { client_ops: 1, upstream_ops: 2 }),
            "an update of external_ids only: the options fix is an appended op"
        );
        pending.insert(id, p);
        let reply = br#"{"id":18446744073709551616,"result":[{"count":1},{"count":1}],"error":null}"#;
        let answered = fix_reply(reply, &mut pending).expect("answered");
        let fixed = answered.bytes.expect("trimmed");
        assert_eq!(&fixed[..], br#"{"id":18446744073709551616,"result":[{"count":1}],"error":null}"#);
        assert_eq!(answered.outcome, Outcome::Committed { void: Vec::new() });
        assert_eq!(answered.pending.changes.len(), 1);
        assert!(pending.is_empty());
    }

    #[test]
    fn replies_not_awaited_pass_untouched() {
        let mut pending = PendingMap::new();
        let p = Pending {
            trim: Some(Trim { client_ops: 1, upstream_ops: 2 }),
            changes: Vec::new(),
            appended: vec![0],
        };
        pending.insert("[1,2]".into(), p.clone());
        assert!(fix_reply(br#"{"id":3,"result":[{},{}],"error":null}"#, &mut pending).is_none());
        assert!(fix_reply(br#"{"id":null,"method":"update3","params":[]}"#, &mut pending).is_none());
        // a JSON-RPC error for the awaited id: forwarded as it is, and forgotten
        let a = fix_reply(br#"{"id":[1, 2],"error":"unknown database"}"#, &mut pending).expect("answered");
        assert!(a.bytes.is_none());
        assert_eq!(a.outcome, Outcome::Refused("\"unknown database\"".into()));
        assert!(pending.is_empty());
        // An op's error, and the commit's: refused, the result still trimmed.
        pending.insert("1".into(), p.clone());
        let a = fix_reply(
            br#"{"id":1,"result":[{"error":"timed out","details":"w"},null],"error":null}"#,
            &mut pending,
        )
        .expect("answered");
        assert_eq!(a.outcome, Outcome::Refused("timed out: w".into()));
        assert_eq!(
            &a.bytes.expect("trimmed")[..],
            br#"{"id":1,"result":[{"error":"timed out","details":"w"}],"error":null}"#
        );
        pending.insert("2".into(), Pending { trim: None, changes: Vec::new(), appended: Vec::new() });
        let a = fix_reply(
            br#"{"id":2,"result":[{"count":1},{"error":"referential integrity violation"}],"error":null}"#,
            &mut pending,
        )
        .expect("answered");
        assert!(a.bytes.is_none(), "nothing appended: forwarded as it came");
        assert_eq!(a.outcome, Outcome::Refused("referential integrity violation".into()));
        // The appended fix matched nothing: committed, that change void.
        pending.insert("3".into(), p.clone());
        let a = fix_reply(br#"{"id":3,"result":[{"count":1},{"count":0}],"error":null}"#, &mut pending)
            .expect("answered");
        assert_eq!(a.outcome, Outcome::Committed { void: vec![0] });
    }

    #[test]
    fn nothing_migrating_port_writes_pass_unparsed_unless_they_name_the_tag() {
        let cfg = PolicyConfig::default();
        let untagged = br#"{"id":5,"method":"transact","params":["OVN_Northbound",{"op":"mutate","table":"Logical_Switch_Port","where":[["name","==","vm1"]],"mutations":[["external_ids","insert",["map",[["pod","ns/vm1"]]]]]}]}"#;
        assert!(may_touch_ports(untagged));
        assert!(!must_plan(untagged, &cfg, true));
        assert!(must_plan(untagged, &cfg, false), "something migrates: every port write is planned");
        let tagging = br#"{"id":5,"method":"transact","params":["OVN_Northbound",{"op":"mutate","table":"Logical_Switch_Port","where":[["name","==","vm1"]],"mutations":[["external_ids","insert",["map",[["migration-destination","hv2"]]]]]}]}"#;
        assert!(must_plan(tagging, &cfg, true));
        // The key spelt with an escape: planned (the parser reads it as the key).
        let escaped = br#"{"id":5,"method":"transact","params":["OVN_Northbound",{"op":"mutate","table":"Logical_Switch_Port","where":[["name","==","vm1"]],"mutations":[["external_ids","insert",["map",[["migration-destination","hv2"]]]]]}]}"#;
        assert!(must_plan(escaped, &cfg, true));
        let plan = inspect_request(&Bytes::from_static(escaped), &tagged_port(), &cfg).expect("a transact");
        assert!(plan.plan.rewrite().is_some(), "the escaped key tags the port");
        // Another destination key in force: the old one means nothing, the new one is looked for.
        let other = PolicyConfig { destination_key: "kubevirt.io/target".into(), ..PolicyConfig::default() };
        assert!(!must_plan(tagging, &other, true));
        let kubevirt = br#"{"id":5,"method":"transact","params":["OVN_Northbound",{"op":"update","table":"Logical_Switch_Port","where":[],"row":{"external_ids":["map",[["kubevirt.io/target","hv2"]]]}}]}"#;
        assert!(must_plan(kubevirt, &other, true));
        assert!(!must_plan(kubevirt, &cfg, true));
    }

    #[test]
    fn cancel_names_the_request_given_up() {
        assert_eq!(
            cancelled_id(br#"{"method":"cancel","params":[[1, "a"]],"id":null}"#).as_deref(),
            Some(r#"[1,"a"]"#)
        );
        assert_eq!(cancelled_id(br#"{"method":"cancel","params":[7],"id":3}"#), None);
        assert_eq!(cancelled_id(br#"{"method":"echo","params":["cancel"],"id":null}"#), None);
    }
}
