//! One migration's record: the stages it reached with their times, its tags' phase, its
//! source and where it was learnt, its SB binding, and the final state still due.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::policy::Cause;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Tagged,
    DestinationRequested,
    DestinationBound,
    Activated,
    Finalized,
    Succeeded,
    Failed,
    Aborted,
    SingleChassis,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Tagged => "tagged",
            Stage::DestinationRequested => "destination-requested",
            Stage::DestinationBound => "destination-bound",
            Stage::Activated => "activated",
            Stage::Finalized => "finalized-by-proxy",
            Stage::Succeeded => "succeeded",
            Stage::Failed => "failed",
            Stage::Aborted => "aborted",
            Stage::SingleChassis => "single-chassis",
        }
    }
}

/// How a watched migration stands: its tags' phase, or aborted (the destination removed while it
/// was in progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Succeeded,
    Failed,
    Aborted,
}

impl From<crate::policy::Phase> for Status {
    fn from(p: crate::policy::Phase) -> Self {
        match p {
            crate::policy::Phase::InProgress => Status::InProgress,
            crate::policy::Phase::Succeeded => Status::Succeeded,
            crate::policy::Phase::Failed => Status::Failed,
        }
    }
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in-progress",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Aborted => "aborted",
        }
    }
}

/// The Southbound `Port_Binding` of a port, chassis as names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    pub chassis: Option<String>,
    pub additional_chassis: Vec<String>,
    pub requested_chassis: Option<String>,
    pub requested_additional_chassis: Vec<String>,
    /// `options:additional-chassis-activated`, split on commas.
    pub activated: Vec<String>,
    pub up: Option<bool>,
}

/// Where the proxy learnt a migration's source chassis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceOrigin {
    /// The source tag.
    Tag,
    /// The first entry of `requested-chassis` when the proxy first saw the destination.
    RequestedChassis,
    /// The chassis binding the port in the Southbound, other than the destination.
    Southbound,
}

/// One migration of one port.
#[derive(Debug, Clone)]
pub struct Migration {
    pub port: String,
    pub source: Option<String>,
    pub source_origin: Option<SourceOrigin>,
    pub destination: String,
    pub phase: Status,
    pub events: Vec<(Stage, SystemTime)>,
    pub binding: Option<Binding>,
    /// Position in the order migrations finished, while finished.
    pub(super) finished: Option<u64>,
    /// A final state this migration reached (aborted, succeeded, failed) and that no row has
    /// shown applied yet.
    pub(super) due: Option<Due>,
}

/// The options a finished migration must end with, due since the row's `requested-chassis`
/// was `stale`: still due while a row of the port shows that same value (a fix that lost a
/// race, or a resynchronisation, does not lose it); done, or overtaken by a writer, once a row
/// shows another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub stale: Option<String>,
    pub requested_chassis: String,
    pub cause: Cause,
}

impl Migration {
    pub(super) fn new(port: &str, destination: String, phase: Status, binding: Option<Binding>) -> Migration {
        Migration {
            port: port.to_string(),
            source: None,
            source_origin: None,
            destination,
            phase,
            events: Vec::new(),
            binding,
            finished: None,
            due: None,
        }
    }

    /// `src,dst`, the proxy's `requested-chassis` while this migration is in progress.
    pub(super) fn both(&self) -> Option<String> {
        self.source.as_ref().map(|s| format!("{s},{}", self.destination))
    }

    pub(super) fn reached(&self, stage: Stage) -> bool {
        self.events.iter().any(|(s, _)| *s == stage)
    }

    pub(super) fn mark(&mut self, stage: Stage, now: SystemTime) -> bool {
        if self.reached(stage) {
            return false;
        }
        self.events.push((stage, now));
        true
    }

    pub fn started(&self) -> SystemTime {
        self.events.first().map(|(_, t)| *t).unwrap_or(UNIX_EPOCH)
    }

    /// The latest SB-side state: `requested`, `bound`, `activated` or `-`.
    pub fn sb_state(&self) -> &'static str {
        [Stage::SingleChassis, Stage::Activated, Stage::DestinationBound, Stage::DestinationRequested]
            .into_iter()
            .find(|s| self.reached(*s))
            .map(|s| match s {
                Stage::SingleChassis => "single-chassis",
                Stage::Activated => "activated",
                Stage::DestinationBound => "bound",
                _ => "requested",
            })
            .unwrap_or("-")
    }

    /// Time from the first event to `stage`, if reached.
    pub fn elapsed_to(&self, stage: Stage) -> Option<Duration> {
        let at = self.events.iter().find(|(s, _)| *s == stage)?.1;
        at.duration_since(self.started()).ok()
    }
}
