//! `replay`: plays a session transcript (see `record`) against a database and compares every
//! reply and notification the server sends with the recorded one.
//!
//! Sessions are replayed one after another, each on a connection of its own. The client's
//! messages are sent in order; before a message is sent, every reply and notification recorded
//! before it has arrived and been compared, so requests the client pipelined are pipelined
//! again and matched by id. The client's replies to the server's `echo` probes are not replayed; the
//! server's live probes are answered.
//!
//! Two databases never agree on row uuids, so comparison pairs them: a recorded uuid seen where
//! the live reply has another one (a `["uuid",…]` atom, a bare uuid string or a uuid object key)
//! is mapped to it, consistently (one to one) for the whole replay, and mapped uuids are substituted into the client's later messages. Unordered things
//! (`["set",…]`, `["map",…]`, `select` `rows`, and objects keyed by uuid such as a monitor's
//! `{"Table":{"<uuid>":row}}`) are paired by content, not position. Values that differ between
//! two databases by nature are not compared: see [`IGNORED_COLUMNS`] and [`blank_volatile`].
//!
//! The parts: `parse` reads the transcript, `live` is the connection to the database, `uuids`
//! pairs uuids, `normalise` shapes a message for comparison, `compare` compares and bounds the
//! diff, `session` replays one session, `report` holds the outcome.

mod compare;
mod live;
mod normalise;
mod parse;
mod report;
mod session;
mod uuids;

use std::path::{Path, PathBuf};

use crate::net::remote::Active;
use crate::net::tls::Tls;
use session::replay_session;

pub use compare::{compare_notification, compare_reply, Diff};
pub use normalise::{blank_volatile, IGNORED_COLUMNS};
pub use parse::{parse_transcript, Session, Step, StepKind, Transcript};
pub use report::{Mismatch, Report};
pub use uuids::{is_uuid, UuidMap};

/// Why a replay could not run. The cause, if any, is the error's `source`.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("transcript line {line}: {what}")]
    Transcript { line: usize, what: String },
    #[error("no upstream given")]
    NoUpstream,
    #[error("cannot connect to {remote}")]
    Connect { remote: String, source: std::io::Error },
    #[error("upstream I/O")]
    Io(#[from] std::io::Error),
    #[error("upstream")]
    Client(#[from] crate::net::client::ClientError),
    #[error("upstream sent a message that is not JSON")]
    Json(#[from] serde_json::Error),
    #[error("upstream closed the connection")]
    Closed,
}

/// Replays the transcript in `file` against the first reachable of `upstreams` (`tls` for an
/// `ssl:` one).
pub fn run(file: &Path, upstreams: &[Active], tls: Option<&Tls>) -> Result<Report, ReplayError> {
    let text = std::fs::read_to_string(file)
        .map_err(|source| ReplayError::Read { path: file.to_path_buf(), source })?;
    let transcript = parse_transcript(&text)?;
    let mut report = replay(&transcript, upstreams, tls)?;
    report.file = file.display().to_string();
    Ok(report)
}

/// Replays every session of `t`, in order, sharing one uuid pairing.
pub fn replay(t: &Transcript, upstreams: &[Active], tls: Option<&Tls>) -> Result<Report, ReplayError> {
    let mut report = Report {
        upstream: upstreams.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        sessions: t.sessions.len(),
        ..Report::default()
    };
    let mut map = UuidMap::default();
    for (i, s) in t.sessions.iter().enumerate() {
        replay_session(i + 1, s, upstreams, tls, &mut map, &mut report)?;
    }
    Ok(report)
}

#[cfg(test)]
mod testing;
