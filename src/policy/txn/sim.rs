//! The simulation of a transaction: the client's ops applied in order to working copies of the
//! rows they may match, taken from the view as needed.

use std::collections::HashMap;

use super::step::{Cond, Step};
use crate::policy::value::{Malformed, UuidRef};
use crate::policy::{LspState, LspView, PolicyConfig};

/// A working copy of one row touched by the transaction.
#[derive(Debug)]
pub(super) struct Work {
    /// The view's row; `None` for a row inserted by this transaction.
    pub(super) pre: Option<LspState>,
    /// The row after the ops simulated so far (uuid empty for an insert without `uuid`).
    pub(super) cur: LspState,
    pub(super) named: Option<String>,
    pub(super) deleted: bool,
    /// An op with an unresolved `where` may or may not have written this row.
    pub(super) tainted: bool,
    /// The row had a destination tag at some point (pre-state included).
    pub(super) ever_tagged: bool,
    /// Last op that wrote `options` or `external_ids`, and whether it matched this row alone.
    pub(super) last_write: Option<(usize, bool)>,
    /// The row's `external_ids` after the transaction come from the client (inserted, or
    /// written whole by an `update`), not from the proxy's cache: the migration state the
    /// decision rests on is the client's own.
    pub(super) ext_from_client: bool,
}

/// A row an op may match: already a working copy, or still only in the view.
enum Cand {
    Row(usize),
    View(LspState),
}

pub(super) struct Sim<'a> {
    view: &'a dyn LspView,
    cfg: &'a PolicyConfig,
    pub(super) rows: Vec<Work>,
    by_uuid: HashMap<String, usize>,
    /// Every name a working row has had → those rows (checked against the row's name now).
    by_name: HashMap<String, Vec<usize>>,
    /// uuid-name → working row (`None`: a row of another table).
    named: HashMap<String, Option<usize>>,
    /// An op with an unresolved `where` wrote maps: later ops' match counts are not certain.
    uncertain: bool,
    /// The most view rows a `where` that names no row may walk (a scan of the whole table).
    pub(super) max_scan: usize,
    /// A scan past `max_scan` was needed: the plan is not made here.
    pub(super) scan_refused: bool,
}

impl<'a> Sim<'a> {
    pub(super) fn new(view: &'a dyn LspView, cfg: &'a PolicyConfig) -> Self {
        Sim {
            view,
            cfg,
            rows: Vec::new(),
            by_uuid: HashMap::new(),
            by_name: HashMap::new(),
            named: HashMap::new(),
            uncertain: false,
            max_scan: usize::MAX,
            scan_refused: false,
        }
    }

    fn tagged(&self, row: &LspState) -> bool {
        row.external_ids.get(&self.cfg.destination_key).is_some_and(|d| !d.trim().is_empty())
    }

    fn push(&mut self, pre: Option<LspState>, cur: LspState, named: Option<String>) -> usize {
        let i = self.rows.len();
        if !cur.uuid.is_empty() {
            self.by_uuid.insert(cur.uuid.clone(), i);
        }
        self.by_name.entry(cur.name.clone()).or_default().push(i);
        let ever_tagged = self.tagged(&cur);
        self.rows.push(Work {
            pre,
            cur,
            named,
            deleted: false,
            tainted: false,
            ever_tagged,
            last_write: None,
            ext_from_client: false,
        });
        i
    }

    /// The working rows named `name` now, each once, in order.
    fn named_rows<'s>(&'s self, name: &'s str) -> impl Iterator<Item = usize> + 's {
        let mut seen = self.by_name.get(name).map(Vec::as_slice).unwrap_or_default().to_vec();
        seen.sort_unstable();
        seen.dedup();
        seen.into_iter().filter(move |&i| self.rows[i].cur.name == name)
    }

    fn register_name(&mut self, name: Option<String>, row: Option<usize>) -> Result<(), Malformed> {
        if let Some(name) = name {
            if self.named.insert(name, row).is_some() {
                return Err(Malformed("duplicate uuid-name"));
            }
        }
        Ok(())
    }

    /// The rows an op's `where` matches (live rows only), materialising view rows as needed, and
    /// whether that set is certain (no condition on a column the policy cannot evaluate).
    fn resolve(&mut self, conds: &[Cond]) -> Result<(Vec<usize>, bool), Malformed> {
        for c in conds {
            if let Cond::Uuid { target: UuidRef::Named(n), .. } = c {
                if !self.named.contains_key(n) {
                    return Err(Malformed("where names an unknown uuid-name"));
                }
            }
        }
        let certain = !conds.iter().any(|c| matches!(c, Cond::Other));
        if conds.iter().any(|c| matches!(c, Cond::Const(false))) {
            return Ok((Vec::new(), certain));
        }
        let mut cands: Vec<Cand> = Vec::new();
        let uuid_eq = conds.iter().find_map(|c| match c {
            Cond::Uuid { eq: true, target } => Some(target),
            _ => None,
        });
        let name_eq = conds.iter().find_map(|c| match c {
            Cond::Name { eq: true, value } => Some(value),
            _ => None,
        });
        if let Some(target) = uuid_eq {
            match target {
                UuidRef::Uuid(u) => match self.by_uuid.get(u) {
                    Some(&i) => cands.push(Cand::Row(i)),
                    None => cands.extend(self.view.by_uuid(u).map(Cand::View)),
                },
                UuidRef::Named(n) => cands.extend(self.named.get(n).copied().flatten().map(Cand::Row)),
            }
        } else if let Some(name) = name_eq {
            cands.extend(self.named_rows(name).map(Cand::Row));
            if let Some(s) = self.view.by_name(name) {
                if !self.by_uuid.contains_key(&s.uuid) {
                    cands.push(Cand::View(s));
                }
            }
        } else {
            if self.view.size() > self.max_scan {
                self.scan_refused = true;
                return Ok((Vec::new(), certain));
            }
            cands.extend((0..self.rows.len()).map(Cand::Row));
            let by_uuid = &self.by_uuid;
            cands.extend(
                self.view.all().into_iter().filter(|s| !by_uuid.contains_key(&s.uuid)).map(Cand::View),
            );
        }
        let mut out = Vec::new();
        for cand in cands {
            match cand {
                Cand::Row(i) => {
                    let w = &self.rows[i];
                    if !w.deleted && conds.iter().all(|c| c.holds(&w.cur, w.named.as_deref())) {
                        out.push(i);
                    }
                }
                Cand::View(s) => {
                    if conds.iter().all(|c| c.holds(&s, None)) {
                        out.push(self.push(Some(s.clone()), s, None));
                    }
                }
            }
        }
        Ok((out, certain))
    }

    /// Applies a write to the matched rows.
    fn write(
        &mut self,
        k: usize,
        rows: &[usize],
        certain: bool,
        writes_maps: bool,
        f: impl Fn(&mut LspState),
    ) {
        let single = rows.len() == 1 && certain && !self.uncertain;
        for &i in rows {
            let name = self.rows[i].cur.name.clone();
            f(&mut self.rows[i].cur);
            if self.rows[i].cur.name != name {
                self.by_name.entry(self.rows[i].cur.name.clone()).or_default().push(i);
            }
            let tagged = self.tagged(&self.rows[i].cur);
            let w = &mut self.rows[i];
            w.ever_tagged |= tagged;
            if writes_maps {
                w.last_write = Some((k, single));
                w.tainted |= !certain;
            }
        }
        if writes_maps && !certain {
            self.uncertain = true;
        }
    }

    pub(super) fn step(&mut self, k: usize, step: &Step) -> Result<(), Malformed> {
        match step {
            Step::Ignore => {}
            Step::OtherInsert { uuid_name } => self.register_name(uuid_name.clone(), None)?,
            Step::Insert { write, uuid_name, uuid } => {
                if let Some(u) = uuid {
                    if self.by_uuid.contains_key(u) || self.view.by_uuid(u).is_some() {
                        return Err(Malformed("insert reuses an existing uuid"));
                    }
                }
                let mut cur = LspState { uuid: uuid.clone().unwrap_or_default(), ..LspState::default() };
                write.apply(&mut cur);
                let i = self.push(None, cur, uuid_name.clone());
                self.rows[i].last_write = Some((k, true));
                self.rows[i].ext_from_client = true;
                self.register_name(uuid_name.clone(), Some(i))?;
            }
            Step::Update { conds, write } => {
                let (rows, certain) = self.resolve(conds)?;
                // An unresolved rename alone is ignored, as any other unresolved non-map write.
                if certain || write.writes_maps() {
                    self.write(k, &rows, certain, write.writes_maps(), |r| write.apply(r));
                    if write.external_ids.is_some() {
                        for &i in &rows {
                            self.rows[i].ext_from_client = true;
                        }
                    }
                }
            }
            Step::Mutate { conds, muts } => {
                let (rows, certain) = self.resolve(conds)?;
                self.write(k, &rows, certain, true, |r| muts.iter().for_each(|m| m.apply(r)));
            }
            Step::Delete { conds } => {
                let (rows, certain) = self.resolve(conds)?;
                if certain {
                    for i in rows {
                        self.rows[i].deleted = true;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `name` is, after the transaction, the name of exactly one port: one live simulated
/// row, and no port of the view that the transaction did not touch.
pub(super) fn names_one_row(sim: &Sim, view: &dyn LspView, name: &str) -> bool {
    let live = sim.named_rows(name).filter(|&i| !sim.rows[i].deleted).count();
    let untouched = view.by_name(name).is_some_and(|s| !sim.by_uuid.contains_key(&s.uuid));
    live == 1 && !untouched
}
