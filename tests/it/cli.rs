//! The command line: OVS remote syntax, clear errors, retry of an unreachable upstream.

use crate::common::*;

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
    for ovn_nb_proxy::control::Command { name: cmd, .. } in ovn_nb_proxy::control::COMMANDS {
        assert!(page.contains(cmd), "control command {cmd} is not in the man page");
    }
    for section in ["CONTRACT", "CONTROL COMMANDS", "SIGNALS", "FILES"] {
        assert!(page.lines().any(|l| l == section), "section {section}");
    }
}
