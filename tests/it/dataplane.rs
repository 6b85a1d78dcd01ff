//! Real packets: a VM live-migrates hv1 → hv2 on the OVS userspace datapath while the peer
//! streams TCP to it and probes it every 2 ms; the CMS drives the migration through the proxy
//! with tags only (P) or writes the options itself, directly (D, the reference). Every run's TCP
//! stream must survive, and P's median interruption stay within its bound: 30 ms for the
//! namespace VM (noise floor included), QEMU's own downtime + 50 ms for the QEMU guest.
//! `DATAPLANE_RUNS` sets the runs per arm (default 3 for the namespace VM, 1 for QEMU). The two
//! tests take turns: each loads both cores.

use crate::common::*;

use std::time::Duration;

use ovn_nb_lab::netlab::run::{reset, run_once, summary, Arm, Cms, Measured};
use ovn_nb_lab::netlab::PacketLab;

/// P's median interruption (longest gap between UDP replies, probe every 2 ms), noise included.
const P_MEDIAN_BOUND_MS: f64 = 30.0;

fn runs(default: usize) -> usize {
    std::env::var("DATAPLANE_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(default)
}

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_vm_keeps_its_tcp_connection_across_a_migration_through_the_proxy() {
    let _turn = heavy();
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::Builder::new().prefix("nbproxy-dataplane.").tempdir().expect("tmp");
    let mut lab = PacketLab::start(dir.path(), 2, "hv1").unwrap_or_else(|e| panic!("lab: {e:#}"));
    lab.namespace_vm().unwrap_or_else(|e| panic!("vm: {e:#}"));
    let mut proxy = Proxy::start(&lab.nb_remote(), &[&format!("--sb-db={}", lab.sb_remote())]);
    proxy.wait_log("this proxy is the active reconciler", Duration::from_secs(10));
    let nb = lab.nb_socket();
    let cms = Cms { proxy: &proxy.unix, nb: &nb };
    let mut all: Vec<Measured> = Vec::new();
    for _ in 0..runs(3) {
        for arm in [Arm::Proxy, Arm::Direct] {
            reset(&mut lab).unwrap_or_else(|e| panic!("reset: {e:#}"));
            let m = run_once(&mut lab, arm, &cms).unwrap_or_else(|e| panic!("{}: {e:#}", arm.label()));
            eprintln!("{m:?}");
            all.push(m);
        }
    }
    let (_, table) = summary(&all);
    eprintln!("{table}");
    for m in &all {
        assert!(m.tcp_survived, "{}: the TCP stream broke: {:?}", m.arm, m.tcp_error);
    }
    let p: Vec<f64> = all.iter().filter(|m| m.arm == "P").map(|m| m.interruption_ms).collect();
    let (median, _, _) = ovn_nb_lab::netlab::run::spread(&p).expect("P runs");
    assert!(
        median <= P_MEDIAN_BOUND_MS,
        "P's median interruption {median:.1} ms > {P_MEDIAN_BOUND_MS} ms\n{table}"
    );
    // The proxy did it in the CMS's own transactions.
    let audits = proxy.audits("vm");
    assert!(
        audits.iter().any(|l| l.contains("rewrite port=vm ") && l.contains("cause=started")),
        "{audits:#?}"
    );
}

/// The same with a real guest: QEMU (TCG) live-migrated by QEMU itself, its announce the RARP.
/// Needs the Debian packages qemu-system-x86, busybox-static, linux-image-amd64, cpio
/// (`tools/setup.sh` installs them).
#[test]
fn a_qemu_guest_keeps_its_tcp_connection_across_qemus_live_migration() {
    let _turn = heavy();
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::Builder::new().prefix("nbproxy-qemu.").tempdir().expect("tmp");
    let guest = ovn_nb_lab::netlab::qemu::prepare(dir.path()).unwrap_or_else(|e| panic!("guest: {e:#}"));
    let mut lab = PacketLab::start(dir.path(), 2, "hv1").unwrap_or_else(|e| panic!("lab: {e:#}"));
    let mut proxy = Proxy::start(&lab.nb_remote(), &[&format!("--sb-db={}", lab.sb_remote())]);
    proxy.wait_log("this proxy is the active reconciler", Duration::from_secs(10));
    let nb = lab.nb_socket();
    let cms = Cms { proxy: &proxy.unix, nb: &nb };
    let mut all = Vec::new();
    for _ in 0..runs(1) {
        for arm in [Arm::Proxy, Arm::Direct] {
            let m = ovn_nb_lab::netlab::qemu::run_once(&mut lab, &guest, arm, &cms)
                .unwrap_or_else(|e| panic!("{}: {e:#}", arm.label()));
            eprintln!("{m:?}");
            assert!(m.tcp_survived, "{}: the TCP stream broke: {:?}", m.arm, m.tcp_error);
            all.push(m);
        }
    }
    let (_, table) = summary(&all);
    eprintln!("{table}");
    // The interruption is QEMU's downtime plus what the network adds.
    let p: Vec<&Measured> = all.iter().filter(|m| m.arm == "P").collect();
    let gap =
        ovn_nb_lab::netlab::run::spread(&p.iter().map(|m| m.interruption_ms).collect::<Vec<_>>()).expect("P");
    let down =
        ovn_nb_lab::netlab::run::spread(&p.iter().filter_map(|m| m.qemu_downtime_ms).collect::<Vec<_>>())
            .expect("P");
    // On a loaded TCG machine the network's share grows for every arm alike: then the direct
    // arm of the same run, measured the same way, is the reference the proxy must keep within.
    let direct = ovn_nb_lab::netlab::run::spread(
        &all.iter().filter(|m| m.arm == "D").map(|m| m.interruption_ms).collect::<Vec<_>>(),
    )
    .expect("D");
    assert!(
        gap.0 <= down.0 + 50.0 || gap.0 <= direct.0 + 25.0,
        "P: interruption {:.1} ms > QEMU's downtime {:.1} ms + 50 ms, and > direct's {:.1} ms + 25 ms\n{table}",
        gap.0,
        down.0,
        direct.0
    );
}
