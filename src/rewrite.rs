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
use crate::policy::{map_result, plan_transact, LspState, LspView, Opts, Plan, PolicyConfig};
use crate::timeline::Timelines;
use crate::wire::{id_key, Envelope, Kind};

/// What the session remembers about a request whose reply must be trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub client_ops: usize,
    pub upstream_ops: usize,
}

/// Replies awaited, by canonical id.
pub type PendingMap = HashMap<String, Pending>;

/// The policy's view of the ports: the cache, and (with finalize on activation) the timelines
/// that say which migrations the proxy has finished itself.
pub struct PortsView<'a> {
    pub cache: &'a LspCache,
    pub timelines: Option<&'a Timelines>,
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
    fn finalized(&self, port: &str, destination: &str) -> bool {
        self.timelines.is_some_and(|t| t.is_finalized(port, destination))
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
    /// In a client's transaction.
    Rewrite,
    /// The proxy's own conditional transaction.
    Reconcile,
}

/// One structured log line per port the proxy changes (target `ovn_nb_proxy::audit`): port,
/// the two keys before and after, cause, client, dry run.
pub fn audit(kind: Audit, c: &crate::policy::Change, client: &str, dry_run: bool) {
    let (before, after, cause) = (show_opts(&c.before), show_opts(&c.after), c.cause.as_str());
    match kind {
        Audit::Rewrite => tracing::info!(target: "ovn_nb_proxy::audit", port = %c.port, ?before, ?after,
            cause = %cause, client = %client, dry_run, "rewrite"),
        Audit::Reconcile => tracing::info!(target: "ovn_nb_proxy::audit", port = %c.port, ?before, ?after,
            cause = %cause, client = %client, dry_run, "reconcile"),
    }
}

/// Cheap test before any parsing: could this message be a `transact` on ports?
pub fn may_touch_ports(raw: &[u8]) -> bool {
    memmem::find(raw, b"Logical_Switch_Port").is_some() && memmem::find(raw, b"\"transact\"").is_some()
}

/// Where a member's value lies in a message, as a byte range.
fn span(raw: &[u8], value: &serde_json::value::RawValue) -> Option<std::ops::Range<usize>> {
    let start = (value.get().as_ptr() as usize).checked_sub(raw.as_ptr() as usize)?;
    let end = start + value.get().len();
    (end <= raw.len()).then_some(start..end)
}

/// `raw` with the bytes in `at` replaced by `value`: every other byte of the message — the
/// other members, their order, the id exactly as written, whitespace — stays as it came.
fn splice(raw: &[u8], at: std::ops::Range<usize>, value: &Value) -> Option<Bytes> {
    let text = serde_json::to_vec(value).ok()?;
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
        splice(&self.raw, self.params.clone(), self.plan.rewritten.as_ref()?)
    }

    /// What to remember for the reply, when the rewrite appended ops.
    pub fn pending(&self) -> Option<(String, Pending)> {
        let p = &self.plan;
        (p.rewritten.is_some() && p.upstream_ops > p.client_ops)
            .then(|| (self.id.clone(), Pending { client_ops: p.client_ops, upstream_ops: p.upstream_ops }))
    }
}

/// Runs the policy over a client message, if it is a `transact` request on ports.
pub fn inspect_request(raw: &Bytes, view: &dyn LspView, cfg: &PolicyConfig) -> Option<Inspected> {
    if !may_touch_ports(raw) {
        return None;
    }
    let env = Envelope::parse(raw).ok()?;
    if env.method.as_deref() != Some("transact") || env.kind() != Kind::Request {
        return None;
    }
    let id = env.id_key()?;
    let raw_params = env.params?;
    // Deeper than serde_json's default limit: no OVSDB op nests so deep, the server refuses it.
    let params: Value = serde_json::from_str(raw_params.get()).ok()?;
    let at = span(raw, raw_params)?;
    let plan = plan_transact(&params, view, cfg);
    Some(Inspected { id, plan, raw: raw.clone(), params: at })
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

/// If `raw` answers a pending request, removes it from `pending` and returns the reply with
/// its result trimmed to the client's ops (`None`: forward the original bytes).
pub fn fix_reply(raw: &[u8], pending: &mut PendingMap) -> Option<Bytes> {
    if pending.is_empty() {
        return None;
    }
    let env = Envelope::parse(raw).ok()?;
    if !matches!(env.kind(), Kind::Reply | Kind::Error) {
        return None;
    }
    let p = pending.remove(&env.id_key()?)?;
    if env.kind() == Kind::Error {
        return None; // a JSON-RPC level error has no per-op results
    }
    let raw_result = env.result?;
    let result: Value = serde_json::from_str(raw_result.get()).ok()?;
    let fixed = map_result(&result, p.client_ops, p.upstream_ops);
    splice(raw, span(raw, raw_result)?, &fixed)
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
        if let Some((id, p)) = ins.pending() {
            pending.insert(id, p);
            let reply = br#"{"id":18446744073709551616,"result":[{"count":1},{"count":1}],"error":null}"#;
            let fixed = fix_reply(reply, &mut pending).expect("fixed");
            assert_eq!(&fixed[..], br#"{"id":18446744073709551616,"result":[{"count":1}],"error":null}"#);
            assert!(pending.is_empty());
        } else {
            panic!("an update of external_ids only: the options fix is an appended op");
        }
    }

    #[test]
    fn replies_not_awaited_pass_untouched() {
        let mut pending = PendingMap::new();
        pending.insert("[1,2]".into(), Pending { client_ops: 1, upstream_ops: 2 });
        assert!(fix_reply(br#"{"id":3,"result":[{},{}],"error":null}"#, &mut pending).is_none());
        assert!(fix_reply(br#"{"id":null,"method":"update3","params":[]}"#, &mut pending).is_none());
        // a JSON-RPC error for the awaited id: forwarded as it is, and forgotten
        assert!(fix_reply(br#"{"id":[1, 2],"error":"unknown database"}"#, &mut pending).is_none());
        assert!(pending.is_empty());
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
