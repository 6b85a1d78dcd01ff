//! Replaying one session on a connection of its own: its messages sent in order, every recorded
//! reply and notification awaited and compared.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use super::compare::{compare_notification, compare_reply, Diff, ABSENT};
use super::live::{Live, WAIT};
use super::parse::{id_text, nonnull_id, Session, StepKind};
use super::report::{abridge, Mismatch, Report};
use super::uuids::UuidMap;
use super::ReplayError;
use crate::net::remote::Active;
use crate::net::tls::Tls;

fn describe(msg: &Value) -> String {
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("?");
    match nonnull_id(msg) {
        Some(id) => format!("{method} (id {id})"),
        None => method.to_string(),
    }
}

/// How the reply to a request the proxy had appended ops to was trimmed.
type Trim = Option<crate::policy::Trim>;

/// One session being replayed: its connection, the requests awaiting their replies, and where
/// what it finds goes.
struct Replaying<'r> {
    /// 1-based session number in the transcript.
    number: usize,
    live: Live,
    /// Requests as sent, by id, awaiting comparison of their replies.
    sent: HashMap<String, VecDeque<(Value, Trim)>>,
    map: &'r mut UuidMap,
    report: &'r mut Report,
}

/// Whether the session goes on after a step.
enum Flow {
    Next,
    /// The session cannot go on in step with the recording.
    Stop,
}

/// Replays session `number` on a connection of its own, learning uuid pairs into `map`.
pub(super) fn replay_session(
    number: usize,
    s: &Session,
    upstreams: &[Active],
    tls: Option<&Tls>,
    map: &mut UuidMap,
    report: &mut Report,
) -> Result<(), ReplayError> {
    let live = Live::connect(upstreams, tls)?;
    let mut r = Replaying { number, live, sent: HashMap::new(), map, report };
    for step in &s.steps {
        let outcome = match &step.kind {
            StepKind::Send { raw, msg, trim } => {
                r.send(raw, msg, *trim);
                Ok(Flow::Next)
            }
            StepKind::Reply { id, msg } => r.reply(step.line, id, msg),
            StepKind::Notification { msg } => r.notification(step.line, msg).map(|()| Flow::Next),
        };
        match outcome {
            Ok(Flow::Next) => {}
            Ok(Flow::Stop) => break,
            Err(ReplayError::Closed) => {
                let what = "the server closed the connection".to_string();
                r.mismatch(step.line, what, None, Vec::new());
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    if s.truncated {
        let note = format!("session {number} was truncated when recorded: its end was not replayed");
        r.report.notes.push(note);
    }
    // Let the server finish what this session asked before the next session starts.
    match r.live.barrier() {
        Ok(_) | Err(ReplayError::Closed) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Replaying<'_> {
    /// Reports a mismatch at transcript line `line`.
    fn mismatch(&mut self, line: usize, what: String, request: Option<&Value>, diffs: Vec<Diff>) {
        self.report.mismatches.push(Mismatch {
            session: self.number,
            line,
            what,
            request: request.map(|r| abridge(r.to_string())),
            diffs,
        });
    }

    /// Sends a client message, with uuids mapped; a request then awaits its reply.
    fn send(&mut self, raw: &str, msg: &Value, trim: Trim) {
        let mapped = self.map.substitute(msg);
        match &mapped {
            Some(m) => self.live.send(m.to_string().into_bytes()),
            None => self.live.send(raw.as_bytes().to_vec()),
        }
        if let Some(id) = nonnull_id(msg) {
            self.report.requests += 1;
            let msg = mapped.unwrap_or_else(|| msg.clone());
            self.sent.entry(id_text(id)).or_default().push_back((msg, trim));
        }
    }

    /// Compares the live reply to the request with canonical id `id` with the recorded one.
    fn reply(&mut self, line: usize, id: &str, msg: &Value) -> Result<Flow, ReplayError> {
        let Some((request, trim)) = self.sent.get_mut(id).and_then(VecDeque::pop_front) else {
            return Ok(Flow::Next); // a reply to nothing this replay sent
        };
        match self.live.reply(id) {
            Ok(Some(mut got)) => {
                // Like with like: the client got the reply trimmed to its own ops.
                if let (Some(trim), Some(result)) = (trim, got.get_mut("result")) {
                    *result = trim.apply(result);
                }
                self.report.replies += 1;
                let diffs = compare_reply(&request, msg, &got, self.map);
                if !diffs.is_empty() {
                    let what = format!("reply to {}", describe(&request));
                    self.mismatch(line, what, Some(&request), diffs);
                }
                Ok(Flow::Next)
            }
            Ok(None) => {
                let what = format!("no reply to {} within {} s", describe(&request), WAIT.as_secs());
                self.mismatch(line, what, Some(&request), Vec::new());
                Ok(Flow::Stop)
            }
            Err(e) => Err(e),
        }
    }

    /// Compares the server's next notification with the recorded one.
    fn notification(&mut self, line: usize, msg: &Value) -> Result<(), ReplayError> {
        match self.live.notification() {
            Ok(Some(got)) => {
                self.report.notifications += 1;
                let diffs = compare_notification(msg, &got, self.map);
                if !diffs.is_empty() {
                    let what = format!("notification {}", describe(msg));
                    self.mismatch(line, what, None, diffs);
                }
                Ok(())
            }
            Ok(None) => {
                let what = format!("notification {} not sent by the server", describe(msg));
                let diff = Diff {
                    path: "$".into(),
                    expected: abridge(msg.to_string()),
                    got: ABSENT.into(),
                    context: None,
                };
                self.mismatch(line, what, None, vec![diff]);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
