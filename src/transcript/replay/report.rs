//! The outcome of a replay: the counts, the mismatches found, and their bounded rendering.

use std::fmt;

use super::compare::Diff;

/// Mismatches printed in full; the rest are counted.
const SHOWN_MISMATCHES: usize = 10;
/// Longest rendering of a value or a request in the report, in characters.
const ABRIDGE: usize = 300;

/// A recorded message the live server did not reproduce.
#[derive(Debug)]
pub struct Mismatch {
    /// 1-based session number in the transcript.
    pub session: usize,
    /// Transcript line of the recorded message.
    pub line: usize,
    /// What was compared, e.g. `reply to transact (id 4)`.
    pub what: String,
    /// The request as sent, abridged.
    pub request: Option<String>,
    pub diffs: Vec<Diff>,
}

/// The outcome of a replay.
#[derive(Debug, Default)]
pub struct Report {
    pub file: String,
    pub upstream: String,
    pub sessions: usize,
    pub requests: usize,
    pub replies: usize,
    pub notifications: usize,
    pub mismatches: Vec<Mismatch>,
    /// Things worth knowing that are not mismatches (a truncated recording).
    pub notes: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replay of {} against {}: {} session(s), {} request(s) sent, {} reply(ies) and {} notification(s) compared: ",
            self.file, self.upstream, self.sessions, self.requests, self.replies, self.notifications
        )?;
        if self.passed() {
            writeln!(f, "all equal")?;
        } else {
            writeln!(f, "{} mismatch(es)", self.mismatches.len())?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for (i, m) in self.mismatches.iter().take(SHOWN_MISMATCHES).enumerate() {
            writeln!(
                f,
                "\nmismatch {}: session {}, transcript line {}: {}",
                i + 1,
                m.session,
                m.line,
                m.what
            )?;
            if let Some(r) = &m.request {
                writeln!(f, "  request: {r}")?;
            }
            for d in &m.diffs {
                match &d.context {
                    Some(c) => writeln!(f, "  at {} ({c})", d.path)?,
                    None => writeln!(f, "  at {}", d.path)?,
                }
                writeln!(f, "    expected: {}", d.expected)?;
                writeln!(f, "    got:      {}", d.got)?;
            }
        }
        if self.mismatches.len() > SHOWN_MISMATCHES {
            writeln!(f, "\n… and {} more mismatch(es)", self.mismatches.len() - SHOWN_MISMATCHES)?;
        }
        Ok(())
    }
}

pub(super) fn abridge(mut s: String) -> String {
    if s.chars().count() > ABRIDGE {
        s = s.chars().take(ABRIDGE).collect();
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_bounded_and_readable() {
        let mut r = Report { file: "f".into(), upstream: "unix:s".into(), ..Report::default() };
        assert!(r.to_string().contains("all equal"));
        for i in 0..SHOWN_MISMATCHES + 3 {
            r.mismatches.push(Mismatch {
                session: 1,
                line: i,
                what: "reply to transact (id 4)".into(),
                request: Some("{}".into()),
                diffs: vec![Diff {
                    path: "$.result[0].count".into(),
                    expected: "1".into(),
                    got: "2".into(),
                    context: Some("op 0: mutate Logical_Switch".into()),
                }],
            });
        }
        let text = r.to_string();
        assert!(text.contains("13 mismatch(es)") && text.contains("and 3 more"), "{text}");
        let at = "at $.result[0].count (op 0: mutate Logical_Switch)\n    expected: 1\n    got:      2";
        assert!(text.contains(at), "{text}");
        assert_eq!(abridge("x".repeat(ABRIDGE + 10)).chars().count(), ABRIDGE + 1);
    }
}
