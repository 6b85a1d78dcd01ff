//! Faults under the proxy: the database restarting, clients dying mid-monitor.

use crate::common::*;

use std::time::{Duration, Instant};

#[test]
fn the_database_restarts_under_the_proxy() {
    let mut nb = nb();
    seed_vm1(&nb.server.unix_remote());
    let mut p = Proxy::start(&nb.server.unix_remote(), &[]);
    p.wait_log("port cache synchronised", Duration::from_secs(5));
    ovn_nbctl(&p.unix_remote(), &["ls-add", "acked-before"]).expect("acknowledged before the crash");
    let mut mon = Watcher::start(
        "ovsdb-client",
        &["monitor", &p.unix_remote(), "OVN_Northbound", "Logical_Switch", "name"],
    );
    mon.wait_for("acked-before");
    nb.server.restart().expect("restart");
    let t0 = Instant::now();
    // The client's session was closed with the server's: ovsdb-client monitor exits.
    eventually("the monitor client sees its session end", || !mon.is_running());
    // New clients are served again within seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ovn_nbctl(&p.unix_remote(), &["--timeout=2", "ls-add", "after-restart"]).is_err() {
        assert!(Instant::now() < deadline, "clients not back within 10 s:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("clients back {:?} after the restart", t0.elapsed());
    let names = ovn_nbctl(&nb.server.unix_remote(), &["ls-list"]).expect("list");
    assert!(names.contains("acked-before") && names.contains("after-restart"), "{names}");
    // The reconciler resumed on the new monitor: a tag written around the proxy is fixed.
    eventually("the monitor resynchronised", || p.log_text().matches("port cache synchronised").count() >= 2);
    ovn_nbctl(
        &nb.server.unix_remote(),
        &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"],
    )
    .expect("direct tag");
    eventually("reconciled after the restart", || {
        ovn_nbctl(
            &nb.server.unix_remote(),
            &["get", "Logical_Switch_Port", "vm1", "options:requested-chassis"],
        )
        .is_ok_and(|o| o.trim() == "\"hv1,hv2\"")
    });
}

#[test]
fn a_client_killed_mid_monitor_closes_its_upstream_session() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let ctl = nb.dir.path().join("ovsdb-server.ctl");
    let sessions = || {
        let out =
            run_tool("ovs-appctl", &["-t", &ctl.to_string_lossy(), "memory/show"]).expect("memory/show");
        // "... monitors:N sessions:M" — count the server's sessions.
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix("sessions:"))
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    };
    eventually("only the proxy's own monitor session", || sessions() == 1);
    let mut mon = Watcher::start("ovsdb-client", &["monitor", &p.unix_remote(), "OVN_Northbound", "ALL"]);
    eventually("the monitor session is open upstream", || sessions() == 2);
    mon.kill();
    eventually("its upstream session is closed", || sessions() == 1);
}
