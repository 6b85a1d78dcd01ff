//! Operations: metrics and health endpoints, ovs-appctl additions, config checking and
//! reloading, JSON logs, and the stop sequence (drain, then close; a second signal exits).

use crate::common::*;

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn metrics_and_health_after_a_rewrite() {
    let nb = nb();
    seed_vm1(&nb.server.unix_remote());
    let mut p = Proxy::start(&nb.server.unix_remote(), &["--metrics=127.0.0.1:0"]);
    let addr = p.metrics_addr();
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".into()));
    eventually("ready once the cache is synchronised", || http_get(&addr, "/readyz").0 == 200);
    ovn_nbctl(
        &p.unix_remote(),
        &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"],
    )
    .expect("tag");
    let (code, body) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(sample(&body, "ovn_nb_proxy_rewrites_total{cause=\"started\"}"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "ovn_nb_proxy_transactions_total"), Some(1.0), "{body}");
    assert!(sample(&body, "ovn_nb_proxy_client_sessions_total").is_some_and(|v| v >= 1.0), "{body}");
    assert!(sample(&body, "ovn_nb_proxy_messages_total{direction=\"client_to_server\"}")
        .is_some_and(|v| v >= 3.0));
    assert!(
        sample(&body, "ovn_nb_proxy_bytes_total{direction=\"server_to_client\"}").is_some_and(|v| v > 1000.0)
    );
    assert_eq!(sample(&body, "ovn_nb_proxy_migrations_in_progress"), Some(1.0), "{body}");
    for name in body.lines().filter(|l| l.starts_with("# TYPE")) {
        assert!(name.contains(" ovn_nb_proxy_"), "every metric is prefixed: {name}");
    }
    assert_eq!(http_get(&addr, "/nope").0, 404);
}

#[test]
fn readyz_fails_while_the_upstream_is_down() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut p =
        Proxy::start(&format!("unix:{}", dir.path().join("none.sock").display()), &["--metrics=127.0.0.1:0"]);
    let addr = p.metrics_addr();
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!(code, 503, "{body}");
}

#[test]
fn ovs_appctl_vlog_and_memory() {
    let nb = nb();
    let mut p = Proxy::start(&nb.server.unix_remote(), &[]);
    assert_eq!(p.appctl(&["vlog/list"]).expect("list").trim(), "ovn_nb_proxy=debug");
    p.appctl(&["vlog/set", "warn"]).expect("set");
    assert_eq!(p.appctl(&["vlog/list"]).expect("list").trim(), "warn");
    let before = p.log_text().lines().count();
    ovn_nbctl(&p.unix_remote(), &["ls-list"]).expect("a session");
    ovn_nbctl(&p.unix_remote(), &["ls-list"]).expect("a session");
    assert_eq!(p.log_text().lines().count(), before, "debug session lines are filtered out now");
    let err = p.appctl(&["vlog/set", "[[["]).expect_err("bad filter");
    assert!(err.contains("bad filter"), "{err}");
    p.appctl(&["vlog/set", "ovn_nb_proxy=debug"]).expect("set back");
    ovn_nbctl(&p.unix_remote(), &["ls-list"]).expect("a session");
    p.wait_log("session closed", Duration::from_secs(5));
    let mem = p.appctl(&["memory/show"]).expect("memory/show");
    assert!(mem.starts_with("rss_kb:") && mem.contains("ports:0"), "{mem}");
}

fn proxy_bin(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy")).args(args).output().expect("run")
}

#[test]
fn check_config_accepts_good_files_and_names_the_problem_in_bad_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let good = file(
        "good.toml",
        "[migration]\ndestination-key = \"kubevirt.io/target\"\nfinalize-on-activation = true\n",
    );
    let out = proxy_bin(&["check-config", "--config", &good]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    let cases = [
        ("unknown.toml", "[migration]\ndestination-kye = \"x\"\n", "destination-kye"),
        ("table.toml", "[migrations]\n", "migrations"),
        ("empty.toml", "[migration]\nphase-key = \"\"\n", "phase-key"),
        ("dup.toml", "[migration]\nsource-key = \"migration-destination\"\n", "migration-destination"),
        ("syntax.toml", "[migration\n", "TOML"),
    ];
    for (name, text, needle) in cases {
        let out = proxy_bin(&["check-config", "--config", &file(name, text)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} must be refused");
        assert!(err.contains(needle) || err.to_lowercase().contains(&needle.to_lowercase()), "{name}: {err}");
    }
    let out = proxy_bin(&["check-config", "--config", "/nonexistent.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
}

#[test]
fn sighup_reloads_the_config_and_keeps_it_when_the_new_one_is_bad() {
    let nb = nb();
    seed_vm1(&nb.server.unix_remote());
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, "[migration]\ndestination-key = \"a\"\n").expect("write");
    let mut p = Proxy::start(&nb.server.unix_remote(), &[&format!("--config={}", path.display())]);
    p.wait_log("port cache synchronised", Duration::from_secs(5));
    let get = || {
        ovn_nbctl(
            &nb.server.unix_remote(),
            &["get", "Logical_Switch_Port", "vm1", "options:requested-chassis"],
        )
        .expect("get")
    };
    // A session held open across the reload: it must survive it.
    let mut held = Raw::connect(&p.unix);
    std::fs::write(&path, "[migration]\ndestination-key = \"b\"\n").expect("write");
    Command::new("kill").args(["-HUP", &p.pid().to_string()]).status().expect("kill");
    p.wait_log("config reloaded", Duration::from_secs(5));
    ovn_nbctl(&p.unix_remote(), &["set", "Logical_Switch_Port", "vm1", "external_ids:a=hv2"])
        .expect("old key");
    assert_eq!(get().trim(), "hv1", "the old key no longer counts");
    ovn_nbctl(&p.unix_remote(), &["set", "Logical_Switch_Port", "vm1", "external_ids:b=hv2"])
        .expect("new key");
    assert_eq!(get().trim(), "\"hv1,hv2\"");
    std::fs::write(&path, "[migration]\nbogus = 1\n").expect("write");
    Command::new("kill").args(["-HUP", &p.pid().to_string()]).status().expect("kill");
    p.wait_log("config reload failed", Duration::from_secs(5));
    held.send(br#"{"method":"echo","params":["still"],"id":1}"#);
    assert_eq!(held.recv()["result"][0], "still", "sessions survive reloads");
    assert!(p.is_running());
}

#[test]
fn json_log_lines_parse() {
    let nb = nb();
    let mut p = Proxy::start(&nb.server.unix_remote(), &["--log-format=json"]);
    p.wait_log("port cache synchronised", Duration::from_secs(5));
    let text = p.log_text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
}

#[test]
fn sigterm_drains_open_sessions_then_closes_them() {
    let nb = nb();
    let mut p = Proxy::start(&nb.server.unix_remote(), &["--drain-grace=2"]);
    let mut held = Raw::connect(&p.unix);
    held.send(br#"{"method":"echo","params":[],"id":1}"#);
    assert_eq!(held.recv()["id"], 1);
    let t0 = Instant::now();
    Command::new("kill").args(["-TERM", &p.pid().to_string()]).status().expect("kill");
    p.wait_log("draining client sessions", Duration::from_secs(5));
    // No new sessions...
    eventually("the listener is closed", || std::os::unix::net::UnixStream::connect(&p.unix).is_err());
    // ...but the open one is still served during the grace period.
    held.send(br#"{"method":"echo","params":["draining"],"id":2}"#);
    assert_eq!(held.recv()["result"][0], "draining");
    // At the end of the grace period it is closed and the proxy exits.
    assert!(held.read_to_end().is_empty());
    let waited = t0.elapsed();
    eventually("the proxy exits after the grace period", || !p.is_running());
    assert!(waited >= Duration::from_millis(1500), "closed after the grace period, not at once: {waited:?}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let nb = nb();
    let mut p = Proxy::start(&nb.server.unix_remote(), &["--drain-grace=60"]);
    let _held = Raw::connect(&p.unix);
    eventually("the session is open", || p.log_text().contains("session open"));
    Command::new("kill").args(["-TERM", &p.pid().to_string()]).status().expect("kill");
    p.wait_log("draining client sessions", Duration::from_secs(5));
    Command::new("kill").args(["-TERM", &p.pid().to_string()]).status().expect("kill");
    eventually("the proxy exits well before its 60 s grace", || !p.is_running());
}

#[test]
fn every_metric_is_documented_in_the_readme() {
    let readme =
        std::fs::read_to_string(format!("{}/README.md", env!("CARGO_MANIFEST_DIR"))).expect("README");
    let text = ovn_nb_proxy::proxy::metrics::Metrics::new().encode();
    let names: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next()).collect();
    assert!(names.len() >= 10, "{text}");
    for name in names {
        assert!(readme.contains(&format!("`{name}")), "{name} is not documented in README.md");
    }
}

/// A child process killed on drop.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn appctl_by_name(
    tool: &str,
    rundir_var: &str,
    rundir: &std::path::Path,
    args: &[&str],
) -> Result<String, String> {
    let exe = ovn_nb_lab::sandbox::require(tool).unwrap_or_else(|e| panic!("{e:#}"));
    let out = Command::new(exe)
        .env(rundir_var, rundir)
        .args(["-t", "ovn-nb-proxy"])
        .args(args)
        .output()
        .expect(tool);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// As OVN's daemons under ovn-ctl or systemd: `--pidfile` (locked, so `ovs-appctl -t NAME`
/// and `ovn-appctl -t NAME` find the control socket by name), a second proxy on the same
/// pidfile refused, `--log-file` reopened by `vlog/reopen` after a rotation, and both files
/// gone after SIGTERM.
#[test]
fn pidfile_control_socket_by_name_and_a_reopened_log_file() {
    let nb = nb();
    seed_vm1(&nb.server.unix_remote());
    let dir = tempfile::Builder::new().prefix("nbproxy-daemon.").tempdir().expect("tmp");
    let (pidfile, log) = (dir.path().join("ovn-nb-proxy.pid"), dir.path().join("ovn-nb-proxy.log"));
    let sock = dir.path().join("p.sock");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy"))
            .arg(format!("--upstream={}", nb.server.unix_remote()))
            .arg(format!("--listen=punix:{}", sock.display()))
            .arg(format!("--pidfile={}", pidfile.display()))
            .arg(format!("--log-file={}", log.display()))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("proxy")
    };
    let mut first = Daemon(spawn());
    let ctl = dir.path().join(format!("ovn-nb-proxy.{}.ctl", first.0.id()));
    eventually("the pidfile and the control socket named after it", || pidfile.exists() && ctl.exists());
    let version =
        appctl_by_name("ovs-appctl", "OVS_RUNDIR", dir.path(), &["version"]).expect("ovs-appctl -t NAME");
    assert!(version.starts_with("ovn-nb-proxy "), "{version}");
    let show =
        appctl_by_name("ovn-appctl", "OVN_RUNDIR", dir.path(), &["proxy/show"]).expect("ovn-appctl -t NAME");
    assert!(show.contains("listeners: punix:"), "{show}");
    // A second proxy on the same pidfile stops before binding anything, naming the holder.
    let second = spawn().wait_with_output().expect("second");
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("already locked by a running process") && err.contains(&first.0.id().to_string()),
        "{err}"
    );
    assert!(pidfile.exists(), "the running proxy's pidfile is left alone");
    // The log: in the file (not on stderr); moved away, it is reopened on vlog/reopen.
    eventually("the log file has the start", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening"))
    });
    let rotated = dir.path().join("ovn-nb-proxy.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    appctl_by_name("ovs-appctl", "OVS_RUNDIR", dir.path(), &["vlog/reopen"]).expect("vlog/reopen");
    let db = format!("unix:{}", sock.display());
    ovn_nbctl(&db, &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"])
        .expect("tag");
    eventually("the rewrite is logged in the new file", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("vm1"))
    });
    assert!(!std::fs::read_to_string(&rotated).expect("rotated").contains("vm1"), "not in the old one");
    // SIGTERM: a clean exit, pidfile and control socket removed.
    let pid = first.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = first.0.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!pidfile.exists() && !ctl.exists(), "pidfile and control socket removed on exit");
}

#[test]
fn vlog_reopen_without_a_log_file_says_so() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let err = p.appctl(&["vlog/reopen"]).expect_err("no log file");
    assert!(err.contains("no --log-file"), "{err}");
}
