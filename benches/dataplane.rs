//! Real packets, side by side: the same live migration (hv1 → hv2, the VM pre-plugged on both)
//! driven by each kind of CMS, runs interleaved arm by arm, on the OVS userspace datapath in
//! network namespaces (`ovn_nb_lab::netlab`). On demand, as root:
//!
//! ```sh
//! cargo bench --bench dataplane                       # 10 runs of every arm, namespace VM
//! DATAPLANE_RUNS=3 DATAPLANE_ARMS=P,D cargo bench --bench dataplane
//! DATAPLANE_VM=qemu cargo bench --bench dataplane     # the QEMU guest (netlab::qemu); `both`: both kinds
//! ```
//!
//! Arms: `P` the CMS writes only tags, through the proxy; `D` it writes the options itself,
//! directly (the reference); `N0`/`N1000` naive (no migration support: `requested-chassis=hv2`
//! written 0 ms / 1 s after the VM resumed); `PF` P with finalize on activation; `V`/`V-override`
//! a VM that sends no RARP, tags through the proxy, without/with
//! `migration-activation-strategy=none`. Prints a table of medians and ranges per arm and writes
//! the same, with every run, to `target/dataplane.json`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ovn_nb_lab::netlab::run::{reset, run_once, summary, Arm, Cms, Measured};
use ovn_nb_lab::netlab::PacketLab;
use serde_json::json;

/// The proxy binary in front of the lab's NB, with a config file to switch finalize on and off.
struct ProxyProc {
    child: Child,
    socket: PathBuf,
    ctl: PathBuf,
    config: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl ProxyProc {
    fn start(dir: &Path, nb: &str, sb: &str) -> ProxyProc {
        let (socket, ctl, config) = (dir.join("proxy.sock"), dir.join("proxy.ctl"), dir.join("proxy.toml"));
        std::fs::write(&config, "[migration]\n").expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy"))
            .arg(format!("--upstream={nb}"))
            .arg(format!("--sb-db={sb}"))
            .arg(format!("--listen=punix:{}", socket.display()))
            .arg(format!("--unixctl={}", ctl.display()))
            .arg(format!("--config={}", config.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the proxy");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (sink, stderr) = (log.clone(), child.stderr.take().expect("stderr"));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log").push(line);
            }
        });
        let p = ProxyProc { child, socket, ctl, config, log };
        p.wait_log("this proxy is the active reconciler");
        p
    }

    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log.lock().expect("log").iter().any(|l| l.contains(needle)) {
            assert!(Instant::now() < deadline, "the proxy did not log {needle:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Finalize on activation on or off, through the config file and SIGHUP.
    fn finalize(&self, on: bool) {
        std::fs::write(&self.config, format!("[migration]\nfinalize-on-activation = {on}\n"))
            .expect("config");
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "SIGHUP");
        let want = format!("finalize on activation: {on}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("ovs-appctl")
                .arg("-t")
                .arg(&self.ctl)
                .arg("proxy/show")
                .output()
                .expect("appctl");
            if String::from_utf8_lossy(&out.stdout).contains(&want) {
                return;
            }
            assert!(Instant::now() < deadline, "the proxy did not apply {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    // `cargo bench` passes --bench; criterion's filters do not apply here.
    let runs: usize = std::env::var("DATAPLANE_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    let arms: Vec<Arm> = std::env::var("DATAPLANE_ARMS")
        .unwrap_or_else(|_| "P,D,N0,N1000,PF,V,V-override".into())
        .split(',')
        .map(|a| Arm::parse(a.trim()).unwrap_or_else(|| panic!("unknown arm {a:?}")))
        .collect();
    let vm = std::env::var("DATAPLANE_VM").unwrap_or_else(|_| "namespace".into());
    let kinds: Vec<&str> = match vm.as_str() {
        "namespace" => vec!["namespace"],
        "qemu" => vec!["qemu"],
        "both" => vec!["namespace", "qemu"],
        other => panic!("DATAPLANE_VM={other}: namespace, qemu or both"),
    };
    let dir = tempfile::Builder::new().prefix("nbproxy-dataplane-bench.").tempdir().expect("tmp");
    let t0 = Instant::now();
    let guest = kinds
        .contains(&"qemu")
        .then(|| ovn_nb_lab::netlab::qemu::prepare(dir.path()).unwrap_or_else(|e| panic!("guest: {e:#}")));
    let mut lab = PacketLab::start(dir.path(), 2, "hv1").unwrap_or_else(|e| panic!("lab: {e:#}"));
    if kinds.contains(&"namespace") {
        lab.namespace_vm().unwrap_or_else(|e| panic!("vm: {e:#}"));
    }
    let proxy = ProxyProc::start(dir.path(), &lab.nb_remote(), &lab.sb_remote());
    eprintln!(
        "lab ready in {:.1} s; {runs} runs × {} arms, interleaved; load average {}",
        t0.elapsed().as_secs_f64(),
        arms.len(),
        loadavg()
    );
    let nb = lab.nb_socket();
    let cms = Cms { proxy: &proxy.socket, nb: &nb };
    let mut all: Vec<Measured> = Vec::new();
    let mut finalize = false;
    for run in 0..runs {
        for kind in &kinds {
            for &arm in &arms {
                let want = arm == Arm::ProxyFinalize;
                if want != finalize {
                    proxy.finalize(want);
                    finalize = want;
                }
                let mut m = if *kind == "qemu" {
                    let guest = guest.as_ref().expect("guest");
                    ovn_nb_lab::netlab::qemu::run_once(&mut lab, guest, arm, &cms)
                } else {
                    reset(&mut lab).and_then(|()| run_once(&mut lab, arm, &cms))
                }
                .unwrap_or_else(|e| panic!("run {run} {kind} {}: {e:#}", arm.label()));
                if *kind == "qemu" {
                    m.arm = format!("{} (qemu)", m.arm);
                }
                eprintln!(
                    "run {run} {:<17} tcp {} stall {:6.1} ms  interruption {:6.1} ms  lost {:3}  both {:3}  rarp→act {:?}  downtime {:?}{}",
                    m.arm,
                    if m.tcp_survived { "ok " } else { "BROKEN" },
                    m.tcp_stall_ms,
                    m.interruption_ms,
                    m.lost,
                    m.dup_to_both,
                    m.rarp_to_activated_ms.map(|x| (x * 10.0).round() / 10.0),
                    m.qemu_downtime_ms,
                    m.tcp_error.as_deref().map(|e| format!("  ({e})")).unwrap_or_default()
                );
                all.push(m);
            }
        }
    }
    let (per_arm, table) = summary(&all);
    println!("\n{table}");
    let out = json!({
        "vm": vm,
        "runs_per_arm": runs,
        "machine": {"nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "loadavg_end": loadavg()},
        "arms": per_arm,
        "runs": all,
    });
    let path = target_dir().join("dataplane.json");
    std::fs::create_dir_all(target_dir()).expect("target dir");
    std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json")).expect("write");
    println!("written to {}", path.display());
}
