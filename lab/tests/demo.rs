//! The README's main job (`tools/demo.sh`): it walks through and leaves nothing behind.

use std::process::Command;

use ovn_nb_lab::sandbox::eventually;

#[test]
fn the_demo_walks_through_and_leaves_nothing_running() {
    let out = Command::new(env!("CARGO_BIN_EXE_ovn-nb-demo")).output().expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    for step in [
        "vm1 options = {activation-strategy=rarp, requested-chassis=\"hv1,hv2\"}",
        "vm1 options = {activation-strategy=rarp, mcast_flood=\"true\", requested-chassis=\"hv1,hv2\"}",
        "vm1 options = {mcast_flood=\"true\", requested-chassis=hv2}",
        "vm2 options = {requested-chassis=hv1}",
        "vm3 options = {activation-strategy=rarp, requested-chassis=\"hv1,hv2\"}",
        "ovn_nb_proxy_reconciles_total{outcome=\"applied\"} 1",
        "SB Port_Binding vm [both bound, hv2 blocked until the RARP]: chassis=hv1 additional=[\"hv2\"]",
        "activated=hv2",
        "SB Port_Binding vm [hv2 alone]: chassis=hv2 additional=[]",
        "single-chassis",
    ] {
        assert!(stdout.contains(step), "demo output lacks {step:?}:\n{stdout}");
    }
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("• done: stopping everything and removing "))
        .expect("the demo names its temp dir")
        .to_string();
    assert!(!std::path::Path::new(&dir).exists(), "temp dir {dir} removed");
    let ps = Command::new("ps").args(["-eo", "args"]).output().expect("ps");
    assert!(!String::from_utf8_lossy(&ps.stdout).contains(&dir), "no process of the demo left running");
}

#[test]
fn the_demo_stops_everything_on_ctrl_c() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ovn-nb-demo"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run demo");
    // Interrupt as soon as the database is up.
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).expect("first line");
    assert!(first.contains("NB database"), "{first}");
    let pid = first.split("(pid ").nth(1).and_then(|r| r.split(')').next()).expect("pid").to_string();
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    let status = child.wait().expect("wait");
    assert!(status.success(), "demo exits cleanly on SIGINT: {status}");
    eventually("the demo's ovsdb-server is gone", || !std::path::Path::new(&format!("/proc/{pid}")).exists());
}
