//! One client op as the policy reads it (a [`Step`]): its `where` conditions and its writes of
//! `name`, `options` and `external_ids`, with their OVSDB semantics on a row.

use serde_json::{Map, Value};

use crate::policy::value::{
    is_map, parse_str_map, parse_str_scalar, parse_str_set, parse_uuid, Malformed, StrMap, UuidRef,
};
use crate::policy::{LspState, LSP_TABLE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MapCol {
    Options,
    ExternalIds,
}

impl MapCol {
    fn parse(column: &str) -> Option<MapCol> {
        match column {
            "options" => Some(MapCol::Options),
            "external_ids" => Some(MapCol::ExternalIds),
            _ => None,
        }
    }

    fn of(self, row: &LspState) -> &StrMap {
        match self {
            MapCol::Options => &row.options,
            MapCol::ExternalIds => &row.external_ids,
        }
    }

    fn of_mut(self, row: &mut LspState) -> &mut StrMap {
        match self {
            MapCol::Options => &mut row.options,
            MapCol::ExternalIds => &mut row.external_ids,
        }
    }
}

/// A mutation of a map column (RFC 7047 §5.1 with OVS semantics: `insert` never overwrites,
/// `delete` by map removes a pair only when key and value both match).
#[derive(Debug)]
pub(super) enum Mutation {
    Insert(MapCol, StrMap),
    DeleteKeys(MapCol, Vec<String>),
    DeletePairs(MapCol, StrMap),
}

impl Mutation {
    pub(super) fn col(&self) -> MapCol {
        match self {
            Mutation::Insert(c, _) | Mutation::DeleteKeys(c, _) | Mutation::DeletePairs(c, _) => *c,
        }
    }

    pub(super) fn apply(&self, row: &mut LspState) {
        let map = self.col().of_mut(row);
        match self {
            Mutation::Insert(_, pairs) => {
                for (k, v) in pairs {
                    map.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            Mutation::DeleteKeys(_, keys) => {
                for k in keys {
                    map.remove(k);
                }
            }
            Mutation::DeletePairs(_, pairs) => {
                for (k, v) in pairs {
                    if map.get(k) == Some(v) {
                        map.remove(k);
                    }
                }
            }
        }
    }
}

/// The columns of a `row` (insert or update) that the policy tracks.
#[derive(Debug, Default)]
pub(super) struct RowWrite {
    pub(super) name: Option<String>,
    pub(super) options: Option<StrMap>,
    pub(super) external_ids: Option<StrMap>,
}

impl RowWrite {
    fn parse(row: &Map<String, Value>) -> Result<RowWrite, Malformed> {
        Ok(RowWrite {
            name: row.get("name").map(parse_str_scalar).transpose()?,
            options: row.get("options").map(parse_str_map).transpose()?,
            external_ids: row.get("external_ids").map(parse_str_map).transpose()?,
        })
    }

    pub(super) fn writes_maps(&self) -> bool {
        self.options.is_some() || self.external_ids.is_some()
    }

    pub(super) fn apply(&self, row: &mut LspState) {
        if let Some(name) = &self.name {
            row.name.clone_from(name);
        }
        if let Some(options) = &self.options {
            row.options.clone_from(options);
        }
        if let Some(ext) = &self.external_ids {
            row.external_ids.clone_from(ext);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MapFunc {
    Eq,
    Ne,
    Includes,
    Excludes,
}

/// One `where` condition, on a column the policy can evaluate, or `Other`.
#[derive(Debug)]
pub(super) enum Cond {
    Const(bool),
    Uuid { eq: bool, target: UuidRef },
    Name { eq: bool, value: String },
    Map { col: MapCol, func: MapFunc, map: StrMap },
    Other,
}

impl Cond {
    fn parse(c: &Value) -> Result<Cond, Malformed> {
        if let Value::Bool(b) = c {
            return Ok(Cond::Const(*b));
        }
        let Some([Value::String(column), Value::String(func), value]) = c.as_array().map(Vec::as_slice)
        else {
            return Err(Malformed("condition is not [column, function, value]"));
        };
        let scalar_eq = |func: &str| match func {
            "==" | "includes" => Ok(true),
            "!=" | "excludes" => Ok(false),
            _ => Err(Malformed("bad function for a scalar column")),
        };
        Ok(match column.as_str() {
            "_uuid" => Cond::Uuid { eq: scalar_eq(func)?, target: parse_uuid(value)? },
            "name" => Cond::Name { eq: scalar_eq(func)?, value: parse_str_scalar(value)? },
            col => match MapCol::parse(col) {
                Some(col) => {
                    let func = match func.as_str() {
                        "==" => MapFunc::Eq,
                        "!=" => MapFunc::Ne,
                        "includes" => MapFunc::Includes,
                        "excludes" => MapFunc::Excludes,
                        _ => return Err(Malformed("bad function for a map column")),
                    };
                    Cond::Map { col, func, map: parse_str_map(value)? }
                }
                None => Cond::Other,
            },
        })
    }

    /// Whether `row` satisfies the condition; `Other` is not evaluated (true).
    pub(super) fn holds(&self, row: &LspState, named: Option<&str>) -> bool {
        match self {
            Cond::Const(b) => *b,
            Cond::Uuid { eq, target: UuidRef::Uuid(u) } => (!row.uuid.is_empty() && &row.uuid == u) == *eq,
            Cond::Uuid { eq, target: UuidRef::Named(n) } => (named == Some(n.as_str())) == *eq,
            Cond::Name { eq, value } => (&row.name == value) == *eq,
            Cond::Map { col, func, map } => {
                let have = col.of(row);
                match func {
                    MapFunc::Eq => have == map,
                    MapFunc::Ne => have != map,
                    MapFunc::Includes => map.iter().all(|(k, v)| have.get(k) == Some(v)),
                    MapFunc::Excludes => map.iter().all(|(k, v)| have.get(k) != Some(v)),
                }
            }
            Cond::Other => true,
        }
    }
}

fn parse_where(op: &Map<String, Value>) -> Result<Vec<Cond>, Malformed> {
    op.get("where")
        .and_then(Value::as_array)
        .ok_or(Malformed("op has no where array"))?
        .iter()
        .map(Cond::parse)
        .collect()
}

/// One client op, as far as the policy is concerned.
#[derive(Debug)]
pub(super) enum Step {
    /// Insert into `Logical_Switch_Port`.
    Insert {
        write: RowWrite,
        uuid_name: Option<String>,
        uuid: Option<String>,
    },
    /// Insert into another table: only its uuid-name matters.
    OtherInsert {
        uuid_name: Option<String>,
    },
    Update {
        conds: Vec<Cond>,
        write: RowWrite,
    },
    /// Only the mutations of `options` / `external_ids` are kept.
    Mutate {
        conds: Vec<Cond>,
        muts: Vec<Mutation>,
    },
    Delete {
        conds: Vec<Cond>,
    },
    /// Reads, waits, comments, other tables, LSP writes to other columns.
    Ignore,
}

impl Step {
    /// Whether an in-place edit of this op can set the row's options.
    pub(super) fn can_edit_options(&self) -> bool {
        match self {
            Step::Insert { .. } => true,
            Step::Update { write, .. } => write.options.is_some(),
            Step::Mutate { muts, .. } => muts.iter().any(|m| m.col() == MapCol::Options),
            _ => false,
        }
    }

    pub(super) fn parse(op: &Value) -> Result<Step, Malformed> {
        let op = op.as_object().ok_or(Malformed("op is not an object"))?;
        let kind = op.get("op").and_then(Value::as_str).ok_or(Malformed("op has no \"op\" string"))?;
        match kind {
            "insert" | "update" | "mutate" | "delete" | "select" | "wait" => {}
            "comment" | "commit" | "abort" | "assert" => return Ok(Step::Ignore),
            _ => return Err(Malformed("unknown op")),
        }
        let table = op.get("table").and_then(Value::as_str).ok_or(Malformed("op has no table"))?;
        let uuid_name = match op.get("uuid-name") {
            Some(v) if kind == "insert" => {
                Some(v.as_str().ok_or(Malformed("uuid-name is not a string"))?.to_owned())
            }
            _ => None,
        };
        if table != LSP_TABLE {
            return Ok(if kind == "insert" { Step::OtherInsert { uuid_name } } else { Step::Ignore });
        }
        let row = || op.get("row").and_then(Value::as_object).ok_or(Malformed("op has no row object"));
        Ok(match kind {
            "insert" => {
                let uuid = match op.get("uuid") {
                    Some(v) => Some(v.as_str().ok_or(Malformed("uuid is not a string"))?.to_owned()),
                    None => None,
                };
                Step::Insert { write: RowWrite::parse(row()?)?, uuid_name, uuid }
            }
            "update" => {
                let write = RowWrite::parse(row()?)?;
                if write.name.is_none() && !write.writes_maps() {
                    return Ok(Step::Ignore);
                }
                Step::Update { conds: parse_where(op)?, write }
            }
            "mutate" => {
                let list = op
                    .get("mutations")
                    .and_then(Value::as_array)
                    .ok_or(Malformed("op has no mutations array"))?;
                let mut muts = Vec::new();
                for m in list {
                    let Some([Value::String(column), Value::String(mutator), value]) =
                        m.as_array().map(Vec::as_slice)
                    else {
                        return Err(Malformed("mutation is not [column, mutator, value]"));
                    };
                    let Some(col) = MapCol::parse(column) else { continue };
                    muts.push(match (mutator.as_str(), value) {
                        ("insert", v) => Mutation::Insert(col, parse_str_map(v)?),
                        ("delete", v) if is_map(v) => Mutation::DeletePairs(col, parse_str_map(v)?),
                        ("delete", v) => Mutation::DeleteKeys(col, parse_str_set(v)?),
                        _ => return Err(Malformed("bad mutator for a map column")),
                    });
                }
                if muts.is_empty() {
                    return Ok(Step::Ignore);
                }
                Step::Mutate { conds: parse_where(op)?, muts }
            }
            "delete" => Step::Delete { conds: parse_where(op)? },
            _ => Step::Ignore,
        })
    }
}
