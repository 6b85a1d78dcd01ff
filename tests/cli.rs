//! The command line: OVS remote syntax, clear errors, retry of an unreachable upstream.

mod common;
use common::*;

use std::process::Command;
use std::time::Duration;

fn run_proxy(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy")).args(args).output().expect("run");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_remotes_are_refused_with_a_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["--upstream=tcp:127.0.0.1", "--listen=ptcp:0"], "expected HOST:PORT"),
        (&["--upstream=ptcp:6641", "--listen=ptcp:0"], "is passive"),
        (&["--upstream=unix:/x", "--listen=tcp:127.0.0.1:1"], "is active"),
        (&["--upstream=unix:/x", "--listen=ptcp:0:localhost"], "must be an IP address"),
        (&["--upstream=bogus:1", "--listen=ptcp:0"], "unknown method"),
        (&["--listen=ptcp:0"], "--upstream is required"),
        (&["--upstream=unix:/x"], "--listen is required"),
        (&["--upstream=unix:/x", "--listen=ptcp:0", "--threads=0"], "--threads must be at least 1"),
    ];
    for (args, why) in cases {
        let (ok, err) = run_proxy(args);
        assert!(!ok, "{args:?} must fail");
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

#[test]
fn a_socket_path_in_use_is_refused() {
    let nb = nb();
    let sock = nb.server.socket();
    let (ok, err) =
        run_proxy(&["--upstream=unix:/nonexistent", &format!("--listen=punix:{}", sock.display())]);
    assert!(!ok);
    assert!(err.contains("in use by another process"), "{err}");
    // The server's socket is untouched.
    ovn_nbctl(&nb.server.unix_remote(), &["ls-list"]).expect("server still reachable");
}

#[test]
fn a_stale_socket_file_is_replaced_and_listeners_default_to_loopback() {
    let nb = nb();
    let mut p = Proxy::start(&nb.server.unix_remote(), &[]);
    let line = p.wait_log("listen=ptcp:", Duration::from_secs(1));
    assert!(line.contains(":127.0.0.1"), "ptcp:0 listens on loopback only: {line}");
    let sock = p.unix.clone();
    drop(p);
    // A socket file left behind (as after SIGKILL) is reused, not an error.
    let _stale = std::os::unix::net::UnixListener::bind(&sock).map(drop);
    let p2 = Proxy::start(&nb.server.unix_remote(), &[]);
    ovn_nbctl(&p2.unix_remote(), &["ls-list"]).expect("works");
}

#[test]
fn an_unreachable_upstream_is_retried_until_it_appears() {
    let dir = tempfile::tempdir().expect("tmp");
    let upstream = format!("unix:{}", dir.path().join("nb.sock").display());
    let mut p = Proxy::start(&upstream, &[]);
    p.wait_log("upstream unreachable", Duration::from_secs(5));
    // A client arriving now is closed cleanly; the proxy keeps running.
    let err = ovn_nbctl(&p.unix_remote(), &["--timeout=1", "ls-list"]);
    assert!(err.is_err());
    assert!(p.is_running());
    let server = NbServer::start(dir.path()).expect("start server");
    p.wait_log("upstream reachable", Duration::from_secs(15));
    ovn_nbctl(&server.unix_remote(), &["init"]).expect("init");
    ovn_nbctl(&p.unix_remote(), &["ls-add", "late"]).expect("through the proxy");
}

#[test]
fn the_demo_walks_through_and_leaves_nothing_running() {
    let out = Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy")).arg("demo").output().expect("run demo");
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy"))
        .arg("demo")
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

/// The manual page and the completion come from the same definitions as `--help` and the
/// control socket's command table: every long flag and every `ovs-appctl` command is in them,
/// and `man -l` renders the page.
#[test]
fn the_man_page_and_completion_cover_every_flag_and_control_command() {
    let dir = tempfile::tempdir().expect("tmp");
    let bin = env!("CARGO_BIN_EXE_ovn-nb-proxy");
    let out = Command::new(bin).arg("generate-docs").arg(dir.path()).output().expect("generate-docs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let help =
        String::from_utf8_lossy(&Command::new(bin).arg("--help").output().expect("help").stdout).into_owned();
    let page = Command::new("man")
        .env("MANWIDTH", "200")
        .arg("-l")
        .arg(dir.path().join("ovn-nb-proxy.8"))
        .output()
        .expect("man (Debian package man-db)");
    assert!(page.status.success(), "man -l: {}", String::from_utf8_lossy(&page.stderr));
    let page = String::from_utf8_lossy(&page.stdout).into_owned();
    let bash = std::fs::read_to_string(dir.path().join("ovn-nb-proxy.bash")).expect("completion");
    let flags: Vec<&str> = help
        .split_whitespace()
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .collect();
    assert!(flags.len() > 20, "{flags:?}");
    for flag in &flags {
        assert!(page.contains(flag), "{flag} is not in the man page");
        assert!(bash.contains(flag), "{flag} is not in the completion");
    }
    for (cmd, _, _) in ovn_nb_proxy::control::COMMANDS {
        assert!(page.contains(cmd), "control command {cmd} is not in the man page");
    }
    for section in ["CONTRACT", "CONTROL COMMANDS", "SIGNALS", "FILES"] {
        assert!(page.lines().any(|l| l == section), "section {section}");
    }
}
