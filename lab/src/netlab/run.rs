//! One live migration of the namespace VM, hv1 → hv2, the way a CMS drives it, measured on
//! real packets: the peer's TCP stream and UDP probes, the SB `Port_Binding`, the sniffers on
//! both VIFs.
//!
//! Timeline of a run (times from the switchover, when the VM starts running on hv2):
//!
//! | when | what |
//! |---|---|
//! | −1.5 s | traffic starts; the VM runs behind `tap-src` (hv1), `tap-dst` is pre-plugged on hv2 |
//! | ≈ −0.7 s | the CMS starts the migration (its arm's write), the destination is bound |
//! | 0 | switchover (a bridge port flip), QEMU's RARP schedule from the VM's MAC (not in V) |
//! | +0.5 s | the source VIF is unplugged (the source QEMU exits) |
//! | +delay | the CMS completes the migration (its arm's write) |
//! | +2 s | traffic stops |

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};

use super::PacketLab;
use crate::client::Blocking;
use crate::ovn::{PortBinding, SbWatch};

/// How the CMS drives the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Arm {
    /// P: the CMS writes only tags, through the proxy (the product).
    Proxy,
    /// D: the CMS writes the options itself, directly (what Kube-OVN does): the reference.
    Direct,
    /// N: no migration support: `requested-chassis=hv2` written this long after the VM resumed.
    Naive(u64),
    /// PF: P, with the proxy finishing the migration on activation.
    ProxyFinalize,
    /// V: a VM that sends no RARP (vhost-user), tags through the proxy; with the strategy
    /// override (`migration-activation-strategy=none`) or without.
    NoRarp { override_strategy: bool },
}

impl Arm {
    pub fn label(self) -> String {
        match self {
            Arm::Proxy => "P".into(),
            Arm::Direct => "D".into(),
            Arm::Naive(ms) => format!("N{ms}"),
            Arm::ProxyFinalize => "PF".into(),
            Arm::NoRarp { override_strategy: true } => "V-override".into(),
            Arm::NoRarp { override_strategy: false } => "V".into(),
        }
    }

    pub fn parse(s: &str) -> Option<Arm> {
        Some(match s {
            "P" => Arm::Proxy,
            "D" => Arm::Direct,
            "PF" => Arm::ProxyFinalize,
            "V" => Arm::NoRarp { override_strategy: false },
            "V-override" => Arm::NoRarp { override_strategy: true },
            n if n.starts_with('N') => Arm::Naive(n[1..].parse().ok()?),
            _ => return None,
        })
    }

    /// Whether the VM announces itself (a vhost-user VM does not).
    pub fn sends_rarp(self) -> bool {
        !matches!(self, Arm::NoRarp { .. })
    }
}

/// What one run measured. Times in ms.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub arm: String,
    /// No reset, no error, every byte echoed in order.
    pub tcp_survived: bool,
    pub tcp_error: Option<String>,
    /// The longest time without a TCP echo, from 100 ms before the switchover.
    pub tcp_stall_ms: f64,
    /// The longest time without a UDP reply (probe every 2 ms), from 100 ms before the switchover.
    pub interruption_ms: f64,
    /// UDP probes without a reply.
    pub lost: u64,
    /// The longest gap before the CMS's first move: what the machine does when nothing happens.
    pub noise_ms: f64,
    /// Probes delivered to both VIFs (the source and the destination copy).
    pub dup_to_both: u64,
    /// The first RARP → SB `additional-chassis-activated=hv2`.
    pub rarp_to_activated_ms: Option<f64>,
    /// The CMS's first write → hv2 bound in SB (additional chassis, or main for N).
    pub first_write_to_bound_ms: Option<f64>,
    /// The switchover → SB shows hv2 alone (the final binding).
    pub switch_to_final_ms: Option<f64>,
    /// For a QEMU guest: the migration's downtime as QEMU reports it (`query-migrate`).
    pub qemu_downtime_ms: Option<f64>,
}

/// Where the CMS's writes go.
pub struct Cms<'a> {
    /// The proxy's unix socket (tags).
    pub proxy: &'a Path,
    /// NB's unix socket (options written directly).
    pub nb: &'a Path,
}

/// One transaction on NB over a fresh connection to `socket`; the reply's result.
fn transact(socket: &Path, ops: Value) -> Result<Value> {
    let ops = ops.as_array().cloned().unwrap_or_default();
    Blocking::unix(socket)?.transact("OVN_Northbound", ops)
}

/// Wall-clock seconds (the helpers' clock: every namespace shares it).
pub(super) fn wall(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

fn tags(pairs: &[(&str, &str)]) -> Value {
    let pairs: Vec<Value> = pairs.iter().map(|(k, v)| json!([k, v])).collect();
    json!([{"op": "mutate", "table": "Logical_Switch_Port", "where": [["name", "==", "vm"]],
            "mutations": [["external_ids", "delete", ["set", pairs.iter().map(|p| p[0].clone()).collect::<Vec<_>>()]],
                          ["external_ids", "insert", ["map", pairs]]]}])
}

fn options(rc: &str, strategy: Option<&str>) -> Value {
    let mut pairs = vec![json!(["requested-chassis", rc])];
    if let Some(s) = strategy {
        pairs.push(json!(["activation-strategy", s]));
    }
    json!([{"op": "mutate", "table": "Logical_Switch_Port", "where": [["name", "==", "vm"]],
            "mutations": [["options", "delete", ["set", ["requested-chassis", "activation-strategy"]]],
                          ["options", "insert", ["map", pairs]]]}])
}

/// The longest interval between consecutive `times` within [`from`, `to`] (both ends count).
pub fn longest_gap(times: &[f64], from: f64, to: f64) -> f64 {
    let mut points: Vec<f64> = times.iter().copied().filter(|t| *t >= from && *t <= to).collect();
    points.sort_by(f64::total_cmp);
    let mut best = 0.0f64;
    let mut last = from;
    for p in points.into_iter().chain(std::iter::once(to)) {
        best = best.max(p - last);
        last = p;
    }
    best
}

/// From the SB watch, in ms: the RARP (`rarp_at`, wall clock) to hv2 in
/// `additional-chassis-activated` (looked for from `activated_since`), and the switchover to
/// the port bound on hv2 alone.
pub(super) fn sb_milestones(
    watch: &SbWatch,
    rarp_at: Option<f64>,
    activated_since: Instant,
    switch: Instant,
    at: impl Fn(Instant) -> f64,
) -> (Option<f64>, Option<f64>) {
    let activated = rarp_at.and_then(|r| {
        watch
            .first_since("vm", activated_since, Duration::from_secs(3), |pb| {
                pb.option("additional-chassis-activated").is_some_and(|a| a.split(',').any(|c| c == "hv2"))
            })
            .ok()
            .map(|(t, _)| (at(t) - r) * 1000.0)
    });
    let final_at = watch
        .first_since("vm", switch, Duration::from_secs(5), |pb| {
            pb.chassis.as_deref() == Some("hv2") && pb.additional_chassis.is_empty()
        })
        .ok()
        .map(|(t, _)| t.duration_since(switch).as_secs_f64() * 1000.0);
    (activated, final_at)
}

pub(super) fn times(v: &Value) -> Vec<f64> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
}

/// The port untagged and pinned to hv1 again (written directly).
pub(super) fn reset_options(lab: &PacketLab) -> Result<()> {
    let untag = json!([{"op": "mutate", "table": "Logical_Switch_Port", "where": [["name", "==", "vm"]],
        "mutations": [["external_ids", "delete", ["set", ["migration-destination", "migration-source", "migration-phase", "migration-activation-strategy"]]]]}]);
    let mut ops = untag.as_array().cloned().unwrap_or_default();
    ops.extend(options("hv1", None).as_array().cloned().unwrap_or_default());
    transact(&lab.nb_socket(), Value::Array(ops)).map(drop)
}

/// The CMS starts the migration, as `arm` does.
pub(super) fn start_write(arm: Arm, cms: &Cms) -> Result<()> {
    match arm {
        Arm::Proxy | Arm::ProxyFinalize | Arm::NoRarp { override_strategy: false } => {
            transact(cms.proxy, tags(&[("migration-destination", "hv2")]))?
        }
        Arm::NoRarp { override_strategy: true } => transact(
            cms.proxy,
            tags(&[("migration-destination", "hv2"), ("migration-activation-strategy", "none")]),
        )?,
        Arm::Direct => transact(cms.nb, options("hv1,hv2", Some("rarp")))?,
        Arm::Naive(_) => Value::Null,
    };
    Ok(())
}

/// What follows the VM's resumption on hv2 at `switch`: the source VIF `src_vif` unplugged
/// from hv1 500 ms later, and the CMS completing the migration when `arm` does (its delay for
/// the naive arms, 1 s for the others).
pub(super) fn after_switchover(
    lab: &PacketLab,
    switch: Instant,
    src_vif: &str,
    arm: Arm,
    cms: &Cms,
) -> Result<()> {
    let complete_after = match arm {
        Arm::Naive(ms) => Duration::from_millis(ms),
        _ => Duration::from_millis(1000),
    };
    let (mut unplugged, mut completed) = (false, false);
    while !(unplugged && completed) {
        let now = switch.elapsed();
        if !unplugged && now >= Duration::from_millis(500) {
            lab.hv("hv1")?.unplug(src_vif)?;
            unplugged = true;
        }
        if !completed && now >= complete_after {
            complete_write(arm, cms)?;
            completed = true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// The CMS completes the migration, as `arm` does.
fn complete_write(arm: Arm, cms: &Cms) -> Result<()> {
    match arm {
        Arm::Naive(_) | Arm::Direct => transact(cms.nb, options("hv2", None))?,
        _ => {
            transact(cms.proxy, tags(&[("migration-destination", "hv2"), ("migration-phase", "succeeded")]))?
        }
    };
    Ok(())
}

/// Puts the VM back on hv1 alone (untagged, `requested-chassis=hv1`, the source VIF plugged,
/// the VM behind `tap-src`) and waits until SB shows it.
pub fn reset(lab: &mut PacketLab) -> Result<()> {
    reset_options(lab)?;
    lab.hv("hv1")?.plug("vif-src", "vm")?;
    lab.vm()?.switch_to_source()?;
    // The watch's first events are the bindings as they are when it starts.
    let since = Instant::now();
    let watch = lab.watch_sb()?;
    watch.first_since("vm", since, Duration::from_secs(10), |pb| {
        pb.chassis.as_deref() == Some("hv1") && pb.additional_chassis.is_empty() && pb.up == Some(true)
    })?;
    lab.vm_mut()?.reset_sniffers()?;
    // Let ovn-controller on hv2 settle its flows for the idle destination copy.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// Runs one migration with `arm`; `lab` must hold the namespace VM, reset.
pub fn run_once(lab: &mut PacketLab, arm: Arm, cms: &Cms) -> Result<Measured> {
    let watch = lab.watch_sb()?;
    let (base_i, base_w) = (Instant::now(), wall(SystemTime::now()));
    let at = |i: Instant| base_w + i.saturating_duration_since(base_i).as_secs_f64();
    let secs = 3.5;
    let traffic = lab.traffic(secs)?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(800));

    // The CMS starts the migration.
    let first_write = Instant::now();
    start_write(arm, cms)?;
    let bound = |pb: &PortBinding| pb.additional_chassis.iter().any(|c| c == "hv2");
    let mut first_write_to_bound = None;
    if !matches!(arm, Arm::Naive(_)) {
        let (t, _) = watch.first_since("vm", first_write, Duration::from_secs(10), bound)?;
        first_write_to_bound = Some(t.duration_since(first_write).as_secs_f64() * 1000.0);
    }
    // Past the start's control-plane work, as a real migration is (memory copy takes seconds).
    while started.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(5));
    }

    // The VM resumes on hv2.
    let switch = Instant::now();
    lab.vm()?.switch_to_destination()?;
    let rarp_at = if arm.sends_rarp() { Some(lab.vm_mut()?.rarp()?) } else { None };
    after_switchover(lab, switch, "vif-src", arm, cms)?;
    let result = traffic.finish(Duration::from_secs(30))?;
    let (_, _, both) = lab.vm_mut()?.sniffed()?;

    let t_switch = at(switch);
    let end = result["end"].as_f64().unwrap_or(t_switch + 2.0);
    let echo = times(&result["tcp"]["echo_times"]);
    let replies = times(&result["udp"]["reply_times"]);
    let window = (t_switch - 0.1, end - 0.1);
    let noise_until = at(first_write) - 0.05;
    let noise_from = result["start"].as_f64().unwrap_or(noise_until - 0.5) + 0.3;
    let sent = result["udp"]["sent"].as_u64().unwrap_or(0);
    let received = result["udp"]["received"].as_u64().unwrap_or(0);
    let (activated, final_at) = sb_milestones(&watch, rarp_at, switch, switch, at);
    Ok(Measured {
        arm: arm.label(),
        tcp_survived: result["tcp"]["survived"].as_bool().unwrap_or(false),
        tcp_error: result["tcp"]["error"].as_str().map(String::from),
        tcp_stall_ms: longest_gap(&echo, window.0, window.1) * 1000.0,
        interruption_ms: longest_gap(&replies, window.0, window.1) * 1000.0,
        lost: sent.saturating_sub(received),
        noise_ms: longest_gap(&replies, noise_from, noise_until).max(longest_gap(
            &echo,
            noise_from,
            noise_until,
        )) * 1000.0,
        dup_to_both: both,
        rarp_to_activated_ms: activated,
        first_write_to_bound_ms: first_write_to_bound,
        switch_to_final_ms: final_at,
        qemu_downtime_ms: None,
    })
}

/// Median, min, max of `xs` (none when empty).
pub fn spread(xs: &[f64]) -> Option<(f64, f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    Some((mid, v[0], v[v.len() - 1]))
}

/// Per arm: runs, TCP survived, and the spread of each figure, as JSON and as a text table.
pub fn summary(runs: &[Measured]) -> (Value, String) {
    let mut arms: BTreeMap<String, Vec<&Measured>> = BTreeMap::new();
    for r in runs {
        arms.entry(r.arm.clone()).or_default().push(r);
    }
    let mut json = serde_json::Map::new();
    let mut text = format!(
        "{:<11} {:>4} {:>4}  {:<22} {:<22} {:<14} {:<16} {:<20} {:<20} {:<20}\n",
        "arm",
        "runs",
        "tcp",
        "interruption ms",
        "tcp stall ms",
        "lost",
        "dup to both",
        "rarp→activated ms",
        "noise ms",
        "qemu downtime ms"
    );
    let fmt = |s: Option<(f64, f64, f64)>| match s {
        Some((m, lo, hi)) => format!("{m:.1} [{lo:.1}–{hi:.1}]"),
        None => "–".into(),
    };
    for (arm, rs) in &arms {
        let f = |g: &dyn Fn(&Measured) -> Option<f64>| {
            spread(&rs.iter().filter_map(|r| g(r)).collect::<Vec<_>>())
        };
        let interruption = f(&|r| Some(r.interruption_ms));
        let stall = f(&|r| Some(r.tcp_stall_ms));
        let lost = f(&|r| Some(r.lost as f64));
        let dup = f(&|r| Some(r.dup_to_both as f64));
        let act = f(&|r| r.rarp_to_activated_ms);
        let downtime = f(&|r| r.qemu_downtime_ms);
        let noise = f(&|r| Some(r.noise_ms));
        let survived = rs.iter().filter(|r| r.tcp_survived).count();
        let obj = |s: Option<(f64, f64, f64)>| match s {
            Some((m, lo, hi)) => json!({"median": m, "min": lo, "max": hi}),
            None => Value::Null,
        };
        json.insert(
            arm.clone(),
            json!({"runs": rs.len(), "tcp_survived": survived, "interruption_ms": obj(interruption),
                   "tcp_stall_ms": obj(stall), "lost": obj(lost), "dup_to_both": obj(dup),
                   "rarp_to_activated_ms": obj(act), "noise_ms": obj(noise),
                   "first_write_to_bound_ms": obj(f(&|r| r.first_write_to_bound_ms)),
                   "qemu_downtime_ms": obj(downtime),
                   "switch_to_final_ms": obj(f(&|r| r.switch_to_final_ms))}),
        );
        text.push_str(&format!(
            "{:<11} {:>4} {:>4}  {:<22} {:<22} {:<14} {:<16} {:<20} {:<20} {:<20}\n",
            arm,
            rs.len(),
            survived,
            fmt(interruption),
            fmt(stall),
            fmt(lost),
            fmt(dup),
            fmt(act),
            fmt(noise),
            fmt(downtime)
        ));
    }
    (Value::Object(json), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_count_the_window_edges() {
        assert_eq!(longest_gap(&[1.0, 1.5, 3.0], 0.5, 3.5), 1.5);
        assert_eq!(longest_gap(&[], 0.0, 2.0), 2.0);
        assert!((longest_gap(&[0.9, 1.0, 1.1], 1.0, 1.2) - 0.1).abs() < 1e-9);
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(&[]), None);
        for a in ["P", "D", "N0", "N1000", "PF", "V", "V-override"] {
            assert_eq!(Arm::parse(a).map(Arm::label).as_deref(), Some(a));
        }
    }
}
