//! Reading a transcript: its sessions, and in each the steps a replay takes (messages to send,
//! replies and notifications to expect).

use crate::policy::Trim;
use serde_json::Value;

use super::ReplayError;

/// A transcript: the sessions in the order they were opened.
#[derive(Debug, Default)]
pub struct Transcript {
    pub sessions: Vec<Session>,
}

#[derive(Debug, Default)]
pub struct Session {
    /// Transcript line of the `open` event (of the first message, in a transcript without one).
    pub line: usize,
    pub peer: String,
    pub steps: Vec<Step>,
    /// The recording hit its size cap: what came after is missing.
    pub truncated: bool,
}

#[derive(Debug)]
pub struct Step {
    /// 1-based transcript line.
    pub line: usize,
    pub kind: StepKind,
}

#[derive(Debug)]
pub enum StepKind {
    /// A client request or notification, sent as it went upstream (with uuids mapped).
    /// `trim`: set when the proxy had appended ops to it, so the reply
    /// the client got (the recorded one) was trimmed; the live reply is trimmed the same way
    /// before the two are compared.
    Send { raw: String, msg: Value, trim: Option<Trim> },
    /// The server's reply to the client's request with this id (canonical text).
    Reply { id: String, msg: Value },
    /// A notification from the server (`update`, `update2`, `update3`, `locked`, …).
    Notification { msg: Value },
}

/// Canonical text of an id: compact, object members sorted.
pub(super) fn id_text(id: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k.as_str()]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(id).to_string()
}

pub(super) fn nonnull_id(msg: &Value) -> Option<&Value> {
    msg.get("id").filter(|id| !id.is_null())
}

/// Parses a transcript written by `--record`; several sessions' files may be concatenated.
pub fn parse_transcript(text: &str) -> Result<Transcript, ReplayError> {
    let mut t = Transcript::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| ReplayError::Transcript { line: n, what };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        if let Some(event) = v.get("event").and_then(Value::as_str) {
            match event {
                "open" => t.sessions.push(Session {
                    line: n,
                    peer: v.get("peer").and_then(Value::as_str).unwrap_or_default().to_string(),
                    ..Session::default()
                }),
                "truncated" => current(&mut t, n).truncated = true,
                _ => {}
            }
            continue;
        }
        let dir = v.get("dir").and_then(Value::as_str).ok_or_else(|| bad("no \"dir\"".into()))?;
        let raw = match v.get("raw").and_then(Value::as_str) {
            Some(raw) => raw,
            None if v.get("raw_b64").is_some() => {
                return Err(bad("a message that is not UTF-8 (raw_b64) cannot be replayed".into()))
            }
            None => return Err(bad("no \"raw\"".into())),
        };
        let msg: Value =
            serde_json::from_str(raw).map_err(|e| bad(format!("recorded message is not JSON: {e}")))?;
        let has_method = msg.get("method").is_some();
        let kind = match (dir, has_method, nonnull_id(&msg)) {
            ("c2s", true, _) => {
                let ops = |m: &Value| {
                    m.get("params").and_then(Value::as_array).map_or(0, |p| p.len().saturating_sub(1))
                };
                let original = v
                    .get("original")
                    .and_then(Value::as_str)
                    .and_then(|o| serde_json::from_str::<Value>(o).ok());
                let trim = original
                    .filter(|o| o.get("method").and_then(Value::as_str) == Some("transact"))
                    .map(|o| Trim { client_ops: ops(&o), upstream_ops: ops(&msg) })
                    .filter(|t| t.upstream_ops > t.client_ops);
                Some(StepKind::Send { raw: raw.to_string(), msg, trim })
            }
            // The client's reply to a server echo probe: the live server gets its own answers.
            ("c2s", false, _) => None,
            ("s2c", true, None) => Some(StepKind::Notification { msg }),
            // A server request (its echo probe): answered live, not expected.
            ("s2c", true, Some(_)) => None,
            ("s2c", false, Some(id)) => Some(StepKind::Reply { id: id_text(id), msg }),
            ("s2c", false, None) => None,
            (other, _, _) => return Err(bad(format!("unknown direction {other:?}"))),
        };
        if let Some(kind) = kind {
            current(&mut t, n).steps.push(Step { line: n, kind });
        }
    }
    Ok(t)
}

/// The session being read; a transcript without an `open` event gets one implicitly.
fn current(t: &mut Transcript, line: usize) -> &mut Session {
    if t.sessions.is_empty() {
        t.sessions.push(Session { line, ..Session::default() });
    }
    t.sessions.last_mut().expect("a session was just ensured")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_parsing() {
        let text = [
            r#"{"t":1,"event":"open","session":1,"peer":"unix:p"}"#,
            r#"{"t":1,"dir":"c2s","raw":"{\"id\":1,\"method\":\"list_dbs\",\"params\":[]}"}"#,
            r#"{"t":1,"dir":"s2c","raw":"{\"id\":\"echo\",\"method\":\"echo\",\"params\":[]}"}"#,
            r#"{"t":1,"dir":"c2s","raw":"{\"id\":\"echo\",\"result\":[],\"error\":null}"}"#,
            r#"{"t":1,"dir":"s2c","raw":"{\"id\":null,\"method\":\"update3\",\"params\":[]}"}"#,
            r#"{"t":1,"dir":"s2c","raw":"{\"id\":1,\"result\":[\"OVN_Northbound\"],\"error\":null}"}"#,
            "",
            r#"{"t":2,"event":"open","session":2,"peer":"unix:p"}"#,
            r#"{"t":2,"dir":"c2s","raw":"{\"id\":{\"b\":1,\"a\":2},\"method\":\"echo\",\"params\":[]}"}"#,
            r#"{"t":2,"event":"truncated"}"#,
        ]
        .join("\n");
        let t = parse_transcript(&text).expect("parses");
        assert_eq!(t.sessions.len(), 2);
        let kinds: Vec<String> = t.sessions[0]
            .steps
            .iter()
            .map(|s| match &s.kind {
                StepKind::Send { .. } => format!("send@{}", s.line),
                StepKind::Reply { id, .. } => format!("reply {id}@{}", s.line),
                StepKind::Notification { .. } => format!("note@{}", s.line),
            })
            .collect();
        assert_eq!(kinds, ["send@2", "note@5", "reply 1@6"]);
        assert!(t.sessions[1].truncated);
        assert_eq!(t.sessions[1].line, 8);
        let StepKind::Send { msg, .. } = &t.sessions[1].steps[0].kind else { panic!("a send") };
        assert_eq!(id_text(&msg["id"]), r#"{"a":2,"b":1}"#);

        for (bad, why) in [
            ("nope", "not JSON"),
            (r#"{"dir":"c2s","raw_b64":"AA=="}"#, "raw_b64"),
            (r#"{"dir":"up","raw":"{}"}"#, "unknown direction"),
            (r#"{"dir":"c2s","raw":"{"}"#, "recorded message is not JSON"),
        ] {
            let e = parse_transcript(bad).expect_err(bad).to_string();
            assert!(e.contains("line 1") && e.contains(why), "{bad}: {e}");
        }
    }
}
