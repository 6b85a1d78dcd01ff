//! A lazy look at a JSON-RPC 1.0 envelope as OVSDB speaks it.
//!
//! Only the envelope is parsed; `params`, `result` and `error` stay raw JSON text until someone
//! needs them. Classification follows OVS `lib/jsonrpc.c`: a message with `method` is a request
//! (non-null `id`) or a notification (`id` null or absent); without `method`, a message with a
//! non-null `error` is an error reply, otherwise a reply.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::scan::max_depth;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Reply,
    Error,
}

#[derive(Debug, thiserror::Error)]
#[error("not a JSON-RPC envelope: {0}")]
pub struct EnvelopeError(#[from] serde_json::Error);

/// The members of a message, borrowed from its bytes. Unknown members are ignored here (the
/// server decides what to do with them: the proxy never judges what it does not rewrite).
/// Duplicate members: the last one wins, as in the OVS parser (serde's derive would refuse them).
#[derive(Debug, Default)]
pub struct Envelope<'a> {
    pub method: Option<String>,
    pub params: Option<&'a RawValue>,
    pub id: Option<&'a RawValue>,
    pub result: Option<&'a RawValue>,
    pub error: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Envelope<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Envelope<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON-RPC object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> Result<Envelope<'a>, M::Error> {
                let mut env = Envelope::default();
                let mut method: Option<&'a RawValue> = None;
                while let Some(key) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    let value: &'de RawValue = m.next_value()?;
                    match &*key {
                        "method" => method = Some(value),
                        "params" => env.params = Some(value),
                        "id" => env.id = Some(value),
                        "result" => env.result = Some(value),
                        "error" => env.error = Some(value),
                        _ => {}
                    }
                }
                // A non-string method is left for the server to refuse.
                env.method = method.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
                Ok(env)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// How deep a message may nest and still be read here: ovsdb-server 3.1 reads a message nested
/// 1000 levels deep (an `id` 999 levels deep inside the envelope) and closes the connection on
/// one level more. serde_json stops at 128 unless told.
pub const MAX_DEPTH: usize = 1000;

/// Stack for reading a value nested up to [`MAX_DEPTH`] levels with serde_json's recursive
/// parser (reserved, not committed: only the pages touched count).
const DEEP_STACK: usize = 64 << 20;

fn too_deep_for_serde(e: &serde_json::Error, json: &[u8]) -> bool {
    e.to_string().starts_with("recursion limit exceeded") && max_depth(json) <= MAX_DEPTH
}

fn unbounded<'a, T: Deserialize<'a>>(json: &'a [u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(json);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Runs `f` on a thread with [`DEEP_STACK`] of stack; `None` if no thread could be had.
fn on_deep_stack<R: Send>(f: impl FnOnce() -> R + Send) -> Option<R> {
    std::thread::scope(|s| {
        let t =
            std::thread::Builder::new().name("deep-json".into()).stack_size(DEEP_STACK).spawn_scoped(s, f);
        t.ok()?.join().ok()
    })
}

fn is_null(v: Option<&RawValue>) -> bool {
    v.is_none_or(|v| v.get() == "null")
}

impl<'a> Envelope<'a> {
    /// Parses the envelope of one message (leading whitespace allowed).
    pub fn parse(raw: &'a [u8]) -> Result<Self, EnvelopeError> {
        // Members are captured as raw text without recursion: an `id` of any depth is fine here.
        Ok(serde_json::from_slice(raw)?)
    }

    pub fn kind(&self) -> Kind {
        match (&self.method, is_null(self.id), is_null(self.error)) {
            (Some(_), false, _) => Kind::Request,
            (Some(_), true, _) => Kind::Notification,
            (None, _, false) => Kind::Error,
            (None, _, true) => Kind::Reply,
        }
    }

    /// The id in a canonical form, for matching a reply to its request: the server may write
    /// the same id with other spacing than the client did.
    pub fn id_key(&self) -> Option<String> {
        self.id.and_then(|id| id_key(id.get()))
    }
}

/// Canonical text of a JSON value (compact, members in their original order).
pub fn id_key(json: &str) -> Option<String> {
    let key = |v: serde_json::Value| if v.is_null() { None } else { serde_json::to_string(&v).ok() };
    match serde_json::from_str(json) {
        Ok(v) => key(v),
        // A deep id is read, written and dropped on the deep stack.
        Err(e) if too_deep_for_serde(&e, json.as_bytes()) => {
            on_deep_stack(|| unbounded(json.as_bytes()).ok().and_then(key)).flatten()
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let cases: &[(&str, Kind, Option<&str>, Option<&str>)] = &[
            (r#"{"id":"echo","method":"echo","params":[]}"#, Kind::Request, Some("echo"), Some(r#""echo""#)),
            (r#"{"method":"cancel","params":[3],"id":null}"#, Kind::Notification, Some("cancel"), None),
            (r#"{"id":null,"method":"update3","params":[]}"#, Kind::Notification, Some("update3"), None),
            (r#"{"id":[1, 2],"result":["a"],"error":null}"#, Kind::Reply, None, Some("[1,2]")),
            (r#"{"id":7,"error":"unknown method"}"#, Kind::Error, None, Some("7")),
            (
                r#"{"id":{"databaseName":"OVN_Northbound", "id":"u"},"result":{}}"#,
                Kind::Reply,
                None,
                Some(r#"{"databaseName":"OVN_Northbound","id":"u"}"#),
            ),
            (
                "\n {\"method\":\"transact\",\"params\":[\"OVN_Northbound\"],\"id\":1}",
                Kind::Request,
                Some("transact"),
                Some("1"),
            ),
        ];
        for (raw, kind, method, id) in cases {
            let env = Envelope::parse(raw.as_bytes()).expect("parses");
            assert_eq!(env.kind(), *kind, "{raw}");
            assert_eq!(env.method.as_deref(), *method, "{raw}");
            assert_eq!(env.id_key().as_deref(), *id, "{raw}");
        }
    }

    #[test]
    fn duplicate_members_keep_the_last_value_like_ovs() {
        let env =
            Envelope::parse(br#"{"method":"echo","method":"transact","params":[],"id":1}"#).expect("parses");
        assert_eq!(env.method.as_deref(), Some("transact"));
    }

    #[test]
    fn ids_nested_as_deep_as_the_server_reads_are_keyed() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let msg =
            |n: usize| format!(r#"{{"method":"transact","params":["OVN_Northbound"],"id":{}}}"#, nested(n));
        for n in [127, 128, 500, 999] {
            let text = msg(n);
            let env = Envelope::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{n} levels: {e}"));
            assert_eq!(env.kind(), Kind::Request);
            assert_eq!(env.id_key(), Some(nested(n)), "{n} levels");
        }
        // Far deeper than any server reads: the envelope is read (without recursion), the id
        // is not keyed, and nothing overflows.
        let text = msg(200_000);
        let env = Envelope::parse(text.as_bytes()).expect("the envelope is read");
        assert_eq!(env.id_key(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Envelope::parse(b"{\"id\":").is_err());
        assert!(Envelope::parse(b"{\"method\":\"\xff\"}").is_err());
    }
}
