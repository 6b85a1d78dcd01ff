//! The client's ops as the planner reads them: parsed values, or each op's text, read no
//! further than its head (`op`, `table`, `uuid-name`) when that decides the step.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::step::Step;
use crate::policy::value::Malformed;
use crate::policy::LSP_TABLE;

/// The client's ops, as the planner reads them: values already parsed, or each op's text.
pub(super) enum Ops<'a> {
    Values(&'a [Value]),
    Raw { ops: &'a [&'a RawValue], tag_free: bool },
}

/// What an op says before its row, where and mutations: enough to pass over most ops.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    table: Option<Cow<'a, str>>,
    #[serde(rename = "uuid-name", borrow, default)]
    uuid_name: Option<Cow<'a, str>>,
}

impl Head<'_> {
    /// The step, when the head alone decides it (else the whole op is parsed, which also
    /// gives the error for anything malformed).
    fn step(&self, tag_free: bool) -> Option<Step> {
        let kind = self.op.as_deref()?;
        match kind {
            "comment" | "commit" | "abort" | "assert" => return Some(Step::Ignore),
            "insert" | "update" | "mutate" | "delete" | "select" | "wait" => {}
            _ => return None,
        }
        let other = self.table.as_deref()? != LSP_TABLE;
        match kind {
            "insert" if other || tag_free => {
                Some(Step::OtherInsert { uuid_name: self.uuid_name.as_ref().map(|n| n.to_string()) })
            }
            "select" | "wait" => Some(Step::Ignore),
            _ => other.then_some(Step::Ignore),
        }
    }
}

impl Ops<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Ops::Values(v) => v.len(),
            Ops::Raw { ops, .. } => ops.len(),
        }
    }

    pub(super) fn step(&self, k: usize) -> Result<Step, Malformed> {
        match self {
            Ops::Values(v) => Step::parse(&v[k]),
            Ops::Raw { ops, tag_free } => {
                let head = serde_json::from_str::<Head>(ops[k].get()).ok();
                match head.and_then(|h| h.step(*tag_free)) {
                    Some(step) => Ok(step),
                    None => {
                        Step::parse(&self.value(k).ok_or(Malformed("op is not JSON the policy can read"))?)
                    }
                }
            }
        }
    }

    /// Op `k`, to edit.
    pub(super) fn value(&self, k: usize) -> Option<Value> {
        match self {
            Ops::Values(v) => v.get(k).cloned(),
            Ops::Raw { ops, .. } => serde_json::from_str(ops.get(k)?.get()).ok(),
        }
    }
}
