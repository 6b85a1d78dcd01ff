//! Side by side: the same work against four paths in one run, reported as ratios to direct.
//!
//! * **direct**: the NB `ovsdb-server`'s own TCP listener;
//! * **socat**: `socat TCP-LISTEN:…,nodelay,fork,reuseaddr TCP:…,nodelay`, a plain byte relay;
//! * **ovsdb relay**: `ovsdb-server relay:OVN_Northbound:tcp:…`, the protocol-aware peer (it
//!   holds a copy of the database, answers reads and monitors from it, forwards transactions);
//! * **proxy**: the release binary (`ovn-nb-proxy --upstream tcp:… --listen ptcp:0`).
//!
//! Every path is TCP on 127.0.0.1, so each middle process adds one loopback hop.
//! On demand, not in CI (minutes of CPU; the numbers mean something only on a quiet machine):
//!
//! ```sh
//! cargo bench --bench side_by_side                   # everything, 3 runs each
//! SBS_RUNS=5 SBS_PORTS=20000 SBS_BIG_MB=0 cargo bench --bench side_by_side
//! taskset -c 0 cargo bench --bench side_by_side      # all processes on one CPU
//! ```
//!
//! Pinned to one CPU, nobody waits for a sleeping vCPU to wake: what a middle process adds is
//! then its own work, not the scheduler's.
//!
//! `SBS_RUNS` (default 3; dumps: at least 7): interleaved runs per measurement, medians
//! reported. Round-trip rows also print the proxy minus socat run by run, and the proxy's
//! scheduler accounting per thread (on a CPU, waiting for one) per op.
//! `SBS_PORTS` (default `20000,100000`): database sizes for the dumps; the other measurements use
//! the first size. `SBS_BIG_MB` (default 500): size of the monitor reply for the RSS measurement;
//! 0 skips it. `SBS_ONLY` (default all): a comma list of `dump`, `nbctl`, `rtt`, `tput`, `bulk`,
//! `rss`. `SBS_BULK` (default 5000): ports tagged by the bulk transactions; `SBS_INSERT`
//! (default 60000): untagged ports inserted by one transaction.
//! `SBS_PROXY_THREADS`: the proxy's `--threads` (default: the proxy's default, 1).
//! `SBS_PROXY_BIN`: another build of the proxy to measure (an earlier commit's, say).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use ovn_nb_lab::client::{Blocking, Reader};
use ovn_nb_lab::sandbox::{ovn_nbctl, require, NbServer};
use ovn_nb_proxy::wire::Scanner;
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

// ---------------------------------------------------------------------------------------------
// The one OVSDB client, blocking (the lab's, as `replay` drives it): every path is measured
// with the same client (its own cost per request in every column), so the ratios compare the
// paths.

/// How long one request may take (a bulk transaction takes seconds on a loaded machine).
const WAIT: Duration = Duration::from_secs(600);

struct Rpc(Blocking);

impl Rpc {
    /// `unix:PATH` or `tcp:HOST:PORT`.
    fn connect(remote: &str) -> Result<Rpc> {
        Ok(Rpc(Blocking::connect(remote)?.within(WAIT)))
    }

    fn unix(path: &std::path::Path) -> Result<Rpc> {
        Ok(Rpc(Blocking::unix(path)?.within(WAIT)))
    }

    /// Sends a request and waits for its reply; `error` in the reply is an error.
    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        Ok(self.0.call(method, &params)?)
    }

    /// A transaction whose per-op results must carry no error.
    fn transact(&mut self, ops: Vec<Value>) -> Result<Value> {
        Ok(self.0.transact("OVN_Northbound", ops)?)
    }
}

/// A raw TCP connection, only for the slow reader of the big reply: it reads at its own pace,
/// where the client reads all it can.
fn tcp(remote: &str) -> Result<TcpStream> {
    let addr = remote.strip_prefix("tcp:").ok_or("not a tcp: remote")?;
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// The database and the two middlemen.

/// Adds ports `from..to`: one Logical_Switch per 1000 ports, each port with the columns a CMS
/// sets (addresses, port security, a few external_ids, requested-chassis).
fn populate_ports(nb: &NbServer, from: usize, to: usize) -> Result<()> {
    let mut rpc = Rpc::unix(&nb.socket())?;
    let mut start = from;
    while start < to {
        let end = (start + 1000).min(to);
        let mut ops = Vec::with_capacity(end - start + 1);
        let mut refs = Vec::with_capacity(end - start);
        for i in start..end {
            let mac = format!(
                "0a:00:{:02x}:{:02x}:{:02x}:{:02x}",
                i >> 24 & 0xff,
                i >> 16 & 0xff,
                i >> 8 & 0xff,
                i & 0xff
            );
            let ip = format!("10.{}.{}.{}", i >> 16 & 0xff, i >> 8 & 0xff, i & 0xff);
            ops.push(json!({
                "op": "insert", "table": "Logical_Switch_Port", "uuid-name": format!("p{i}"),
                "row": {
                    "name": format!("lsp{i}"),
                    "addresses": format!("{mac} {ip}"),
                    "port_security": format!("{mac} {ip}"),
                    "external_ids": ["map", [["pod", format!("default/vm{i}")], ["ls", format!("ls{}", i / 1000)], ["vendor", "bench"]]],
                    "options": ["map", [["requested-chassis", format!("node{}", i % 100)]]],
                }
            }));
            refs.push(json!(["named-uuid", format!("p{i}")]));
        }
        ops.push(json!({
            "op": "insert", "table": "Logical_Switch",
            "row": {"name": format!("ls{}", start / 1000), "ports": ["set", refs]}
        }));
        rpc.transact(ops)?;
        start = end;
    }
    Ok(())
}

/// Logical_Switch rows carrying `mb` MB of external_ids in total (100 KB per row): a big
/// monitor reply in a table the proxy does not cache.
fn populate_big(nb: &NbServer, mb: usize) -> Result<()> {
    let mut rpc = Rpc::unix(&nb.socket())?;
    let value: String = "x".repeat(100 * 1024);
    let rows = mb * 10;
    let mut i = 0;
    while i < rows {
        let end = (i + 50).min(rows);
        let ops = (i..end)
            .map(|j| {
                json!({"op": "insert", "table": "Logical_Switch",
                       "row": {"name": format!("big{j}"), "external_ids": ["map", [["blob", value]]]}})
            })
            .collect();
        rpc.transact(ops)?;
        i = end;
    }
    Ok(())
}

/// A child process killed on drop, with its stderr lines collected.
struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn spawn(mut cmd: Command) -> Result<Daemon> {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().ok_or("no stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Ok(Daemon { child, log })
    }

    fn wait_log(&mut self, needle: &str, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) =
                self.log.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|l| l.contains(needle))
            {
                return Ok(l.clone());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("exited ({status}) before logging {needle:?}").into());
            }
            if Instant::now() > deadline {
                return Err(format!("no {needle:?} in the log within {within:?}").into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(upstream: &str) -> Result<(Daemon, String)> {
    let bin = std::env::var("SBS_PROXY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ovn-nb-proxy").into());
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--upstream={upstream}")).arg("--listen=ptcp:0").args(["--log", "info"]);
    if let Ok(n) = std::env::var("SBS_PROXY_THREADS") {
        cmd.arg(format!("--threads={n}"));
    }
    let mut d = Daemon::spawn(cmd)?;
    let line = d.wait_log("ptcp:", Duration::from_secs(10))?;
    let port: u16 = line
        .split("ptcp:")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no port in {line:?}"))?;
    d.wait_log("port cache synchronised", Duration::from_secs(120))?;
    wait_idle(d.pid())?;
    Ok((d, format!("tcp:127.0.0.1:{port}")))
}

/// Waits until a process has settled (under 2 ms of CPU in 200 ms): the proxy goes on working
/// through the initial monitor reply (timelines, reconciler) after it logs the cache synchronised.
fn wait_idle(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = cpu_ns(pid);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = cpu_ns(pid);
        if now - last < 2_000_000 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the proxy did not settle within 300 s".into());
        }
        last = now;
    }
}

/// A passive monitor: one connection holding the `monitor_cond` the proxy's port cache holds
/// (the same columns of `Logical_Switch_Port`), reading and dropping what comes (the client
/// answers echo) until dropped. It costs the server what the proxy's own monitor costs it, and
/// the machine little (`ovsdb-client monitor` would format every update).
fn passive_monitor(upstream: &str) -> Result<Reader> {
    let mut conn = Blocking::connect(upstream)?;
    conn.request(
        "monitor_cond",
        &json!(["OVN_Northbound", "passive",
            {"Logical_Switch_Port": [{"columns": ovn_nb_proxy::cache::nb::COLUMNS}]}]),
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut ready = Some(ready_tx);
    let reader = conn.read_on_thread(
        move |_, _| {
            if let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
        },
        |_| {},
    );
    ready_rx
        .recv_timeout(Duration::from_secs(120))
        .map_err(|_| "the passive monitor got no initial reply")?;
    Ok(reader)
}

/// A TCP port the kernel just handed out: free, barring a race with another process.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not start listening").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// An `ovsdb-server` relay of the database (its files in `dir`), once it serves the port table
/// with `ports` rows.
fn start_ovsdb_relay(upstream: &str, dir: &std::path::Path, ports: usize) -> Result<(Daemon, String)> {
    let port = free_port()?;
    let mut cmd = Command::new(require("ovsdb-server")?);
    cmd.arg(format!("--remote=ptcp:{port}:127.0.0.1"))
        .arg(format!("--unixctl={}", dir.join("relay.ctl").display()))
        .args(["-vconsole:off", "--no-chdir"])
        .arg(format!("relay:OVN_Northbound:{upstream}"));
    let d = Daemon::spawn(cmd)?;
    wait_listening(port, "the ovsdb-server relay")?;
    let remote = format!("tcp:127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut rpc = Rpc::connect(&remote)?;
        let select =
            json!({"op": "select", "table": "Logical_Switch_Port", "where": [], "columns": ["_uuid"]});
        let n = rpc.transact(vec![select]).ok().and_then(|r| r[0]["rows"].as_array().map(Vec::len));
        if n.is_some_and(|n| n >= ports) {
            return Ok((d, remote));
        }
        if Instant::now() > deadline {
            return Err("the ovsdb-server relay did not catch up within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start_socat(upstream: &str) -> Result<(Daemon, String)> {
    let port = free_port()?;
    let target = upstream.strip_prefix("tcp:").ok_or("not a tcp: remote")?;
    let mut cmd = Command::new(require("socat")?);
    cmd.arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,nodelay,fork,reuseaddr"))
        .arg(format!("TCP:{target},nodelay"));
    let d = Daemon::spawn(cmd)?;
    wait_listening(port, "socat")?;
    Ok((d, format!("tcp:127.0.0.1:{port}")))
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The measurements.

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn run_quiet(tool: &str, args: &[&str]) -> Result<Duration> {
    let exe = require(tool)?;
    let t = Instant::now();
    let out = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let took = t.elapsed();
    if !out.status.success() {
        return Err(format!("{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(took)
}

/// ms for one `ovsdb-client dump` of the port table.
fn dump_ms(remote: &str) -> Result<f64> {
    Ok(run_quiet(
        "ovsdb-client",
        &["--timeout=300", "dump", remote, "OVN_Northbound", "Logical_Switch_Port"],
    )?
    .as_secs_f64()
        * 1e3)
}

/// ms per `ovn-nbctl` call, over `n` calls (`--no-leader-only`: a relay is no leader).
fn nbctl_ms(remote: &str, n: usize, args: &dyn Fn(usize) -> Vec<String>) -> Result<f64> {
    let db = format!("--db={remote}");
    let mut total = Duration::ZERO;
    for i in 0..n {
        let mut full = vec!["--timeout=60".to_string(), "--no-leader-only".to_string(), db.clone()];
        full.extend(args(i));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        total += run_quiet("ovn-nbctl", &refs)?;
    }
    Ok(total.as_secs_f64() * 1e3 / n as f64)
}

#[derive(Debug, Clone, Copy)]
enum Rtt {
    /// Answered by the server's JSON-RPC layer.
    Echo,
    /// A write the proxy forwards without parsing (no port in it).
    Switch,
    /// A write the proxy's policy looks at (an untagged port: forwarded as it came), and that
    /// its own port monitor then receives.
    Port,
}

/// The rows the small transactions write, by uuid, as OVSDB clients address them (a `where` on
/// `name` makes ovsdb-server 3.1 scan the table: ~1.3 ms at 20 000 ports, for every path alike).
struct Targets {
    switch: String,
    /// `lsp0`, `lsp1`, ...
    ports: Vec<String>,
}

fn targets(nb: &NbServer, ports: usize) -> Result<Targets> {
    let mut rpc = Rpc::unix(&nb.socket())?;
    let uuid_of = |rpc: &mut Rpc, table: &str, name: &str| -> Result<String> {
        let r = rpc
            .transact(vec![json!({"op": "select", "table": table, "where": [["name", "==", name]],
            "columns": ["_uuid"]})])?;
        Ok(r[0]["rows"][0]["_uuid"][1].as_str().ok_or_else(|| format!("no {table} {name}"))?.to_string())
    };
    let switch = uuid_of(&mut rpc, "Logical_Switch", "ls0")?;
    let ports = (0..ports)
        .map(|i| uuid_of(&mut rpc, "Logical_Switch_Port", &format!("lsp{i}")))
        .collect::<Result<_>>()?;
    Ok(Targets { switch, ports })
}

fn update(table: &str, uuid: &str, value: String) -> Value {
    json!({"op": "update", "table": table, "where": [["_uuid", "==", ["uuid", uuid]]],
           "row": {"external_ids": ["map", [["bench", value]]]}})
}

/// µs per round trip, `n` sequential requests on one connection.
fn rtt_us(remote: &str, n: usize, kind: Rtt, t: &Targets) -> Result<f64> {
    let mut rpc = Rpc::connect(remote)?;
    rpc.call("echo", json!([]))?;
    let start = Instant::now();
    for i in 0..n {
        match kind {
            Rtt::Echo => rpc.call("echo", json!([i]))?,
            Rtt::Switch => rpc.transact(vec![update("Logical_Switch", &t.switch, i.to_string())])?,
            Rtt::Port => rpc.transact(vec![update("Logical_Switch_Port", &t.ports[0], i.to_string())])?,
        };
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// Transactions per second: `clients` connections, each `per_client` sequential updates of a
/// port of its own.
fn throughput(remote: &str, clients: usize, per_client: usize, t: &Targets) -> Result<f64> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let failed = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let remote = remote.to_string();
            let port = t.ports[c + 1].clone();
            let barrier = barrier.clone();
            let failed = failed.clone();
            std::thread::spawn(move || -> Result<()> {
                let conn = Rpc::connect(&remote);
                barrier.wait();
                let mut rpc = conn?;
                for i in 0..per_client {
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = rpc.transact(vec![update("Logical_Switch_Port", &port, format!("{c}-{i}"))]);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                        return r.map(|_| ());
                    }
                }
                Ok(())
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    for h in handles {
        h.join().map_err(|_| "client thread panicked")??;
    }
    Ok((clients * per_client) as f64 / t.elapsed().as_secs_f64())
}

/// The paths, in the table's column order.
const PATHS: [&str; 4] = ["direct", "socat", "ovsdb relay", "proxy"];

struct Row {
    what: String,
    unit: &'static str,
    /// The operations in one run.
    ops: usize,
    measured: Measured,
}

impl Row {
    fn new(what: String, unit: &'static str, ops: usize, measured: Measured) -> Row {
        Row { what, unit, ops, measured }
    }

    /// Each path's median over the runs.
    fn values(&self) -> [f64; 4] {
        self.measured.runs.clone().map(median)
    }

    /// The proxy's CPU time in one run (all threads), median over the runs, ms.
    fn proxy_cpu_ms(&self) -> f64 {
        median(self.measured.threads.iter().map(|t| t.values().map(|v| v.0).sum()).collect())
    }

    /// Per thread name, medians over the runs: ms on a CPU, ms runnable and waiting for one.
    fn proxy_threads(&self) -> Vec<(&str, f64, f64)> {
        let runs = &self.measured.threads;
        let mut names: Vec<&str> = runs.iter().flat_map(|t| t.keys().map(String::as_str)).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|n| {
                let of = |pick: fn(&(f64, f64)) -> f64| {
                    median(runs.iter().map(|t| t.get(n).map_or(0.0, pick)).collect())
                };
                (n, of(|v| v.0), of(|v| v.1))
            })
            .collect()
    }
}

/// What [`Paths::measure`] took: each run's figure per path, and the proxy's scheduler
/// accounting per run, by thread name (ms on a CPU, ms waiting for one).
struct Measured {
    runs: [Vec<f64>; 4],
    threads: Vec<BTreeMap<String, (f64, f64)>>,
}

/// The scheduler's accounting of a process's threads (`/proc/PID/task/*/schedstat`), summed by
/// thread name: ns on a CPU, ns runnable and waiting for one.
fn sched_by_thread(pid: u32) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        let read = |f: &str| std::fs::read_to_string(t.path().join(f));
        let (Ok(comm), Ok(stat)) = (read("comm"), read("schedstat")) else { continue };
        let mut fields = stat.split_whitespace().map(|n| n.parse::<u64>().unwrap_or(0));
        let e: &mut (u64, u64) = out.entry(comm.trim().to_string()).or_default();
        e.0 += fields.next().unwrap_or(0);
        e.1 += fields.next().unwrap_or(0);
    }
    out
}

/// CPU time a process has used, all threads (ns, from the scheduler's accounting).
fn cpu_ns(pid: u32) -> u64 {
    sched_by_thread(pid).values().map(|v| v.0).sum()
}

/// The four paths to one database. The proxy runs only while it is measured: its own port
/// monitor costs the server work on every port write, which must not slow the other paths.
struct Paths {
    upstream: String,
    socat: String,
    /// The relay, like the proxy, runs only while measured (it monitors the whole database):
    /// its files go in `relay_dir`, and it is ready once it holds `ports` ports.
    relay_dir: std::path::PathBuf,
    ports: usize,
    /// Highest VmHWM of any proxy instance (kB).
    proxy_hwm_kb: u64,
    /// VmRSS of the last proxy instance once settled (kB), and how long it took to settle.
    proxy_idle_rss_kb: u64,
    proxy_settle: Vec<f64>,
    /// Set: after its timed call, each proxy instance is left alone this long and its VmRSS
    /// read (`proxy_rss_after_kb`, the last instance's).
    rss_after: Option<Duration>,
    proxy_rss_after_kb: u64,
    /// With `rss_after`: the VmRSS of a fresh proxy started on the database as the timed call
    /// left it, once settled (what the same state costs without the transaction's history).
    proxy_fresh_kb: u64,
    /// Run before each proxy instance starts (so that it starts on the same database state
    /// whatever the other paths' runs left).
    before_proxy: Option<Box<dyn Fn() -> Result<()>>>,
}

impl Paths {
    fn new(upstream: String, socat: String, relay_dir: &std::path::Path, ports: usize) -> Paths {
        Paths {
            upstream,
            socat,
            relay_dir: relay_dir.to_path_buf(),
            ports,
            proxy_hwm_kb: 0,
            proxy_idle_rss_kb: 0,
            proxy_settle: Vec::new(),
            rss_after: None,
            proxy_rss_after_kb: 0,
            proxy_fresh_kb: 0,
            before_proxy: None,
        }
    }

    /// Runs `f` for each path, `runs` times interleaved; the medians, and the proxy's CPU time
    /// (all threads) per run, median, in ms.
    ///
    /// With `warm`, each timed call follows an untimed one on the same path: the first big
    /// allocation after another process freed hundreds of MB (the proxy loading a large cache,
    /// or exiting) costs the client up to a second more system time on this VM, whatever path
    /// it uses.
    ///
    /// With `monitored`, the direct and socat runs have a [`passive_monitor`] attached: the same
    /// work per port write on the server as the proxy's own port monitor (or the relay's) brings.
    fn measure(
        &mut self,
        runs: usize,
        warm: bool,
        monitored: bool,
        mut f: impl FnMut(&str) -> Result<f64>,
    ) -> Result<Measured> {
        let mut samples: [Vec<f64>; 4] = Default::default();
        let mut threads = Vec::new();
        let timed = |f: &mut dyn FnMut(&str) -> Result<f64>, r: &str| -> Result<f64> {
            if warm {
                f(r)?;
            }
            f(r)
        };
        for _ in 0..runs {
            let monitor = if monitored { Some(passive_monitor(&self.upstream)?) } else { None };
            samples[0].push(timed(&mut f, &self.upstream)?);
            samples[1].push(timed(&mut f, &self.socat)?);
            drop(monitor);
            let (relay, remote) = start_ovsdb_relay(&self.upstream, &self.relay_dir, self.ports)?;
            samples[2].push(timed(&mut f, &remote)?);
            drop(relay);
            if let Some(reset) = &self.before_proxy {
                reset()?;
            }
            let t = Instant::now();
            let (proxy, remote) = start_proxy(&self.upstream)?;
            self.proxy_settle.push(t.elapsed().as_secs_f64());
            self.proxy_idle_rss_kb = status_kb(proxy.pid(), "VmRSS:").unwrap_or(0);
            if warm {
                f(&remote)?;
            }
            let before = sched_by_thread(proxy.pid());
            samples[3].push(f(&remote)?);
            let after = sched_by_thread(proxy.pid());
            threads.push(
                after
                    .into_iter()
                    .map(|(name, (run, wait))| {
                        // A thread that exited meanwhile takes its time with it: no underflow.
                        let (r0, w0) = before.get(&name).copied().unwrap_or_default();
                        (name, (run.saturating_sub(r0) as f64 / 1e6, wait.saturating_sub(w0) as f64 / 1e6))
                    })
                    .collect(),
            );
            self.proxy_hwm_kb = self.proxy_hwm_kb.max(status_kb(proxy.pid(), "VmHWM:").unwrap_or(0));
            if let Some(wait) = self.rss_after {
                std::thread::sleep(wait);
                self.proxy_rss_after_kb = status_kb(proxy.pid(), "VmRSS:").unwrap_or(0);
                drop(proxy);
                let (fresh, _) = start_proxy(&self.upstream)?;
                self.proxy_fresh_kb = status_kb(fresh.pid(), "VmRSS:").unwrap_or(0);
            }
        }
        Ok(Measured { runs: samples, threads })
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "| measurement | {} | {} / direct | proxy CPU per op |",
        PATHS.join(" | "),
        PATHS[1..].join(" / direct | ")
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let fmt = |v: f64| {
            if v >= 100.0 {
                format!("{v:.0} {}", r.unit)
            } else {
                format!("{v:.2} {}", r.unit)
            }
        };
        let cpu_us = r.proxy_cpu_ms() * 1e3 / r.ops as f64;
        let cpu =
            if cpu_us >= 1000.0 { format!("{:.1} ms", cpu_us / 1e3) } else { format!("{cpu_us:.1} µs") };
        let v = r.values();
        let values: Vec<String> = v.iter().map(|&v| fmt(v)).collect();
        let ratios: Vec<String> = v[1..].iter().map(|x| format!("{:.3}×", x / v[0])).collect();
        println!("| {} | {} | {} | {cpu} |", r.what, values.join(" | "), ratios.join(" | "));
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let workers = std::env::var("SBS_PROXY_THREADS").unwrap_or_else(|_| "default (1)".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mem = status_line("/proc/meminfo", "MemTotal:");
    format!(
        "nproc {nproc}, CPU {cpu}, {mem}, load average at start {}; proxy --threads: {workers}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

fn status_line(file: &str, key: &str) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(key))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .map(|v| format!("memory {v}"))
        .unwrap_or_default()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The big-reply measurement: the proxy's peak RSS while a slow client reads a monitor reply of
/// about `mb` MB.
fn rss_under_big_reply(mb: usize) -> Result<String> {
    let dir = tempfile::Builder::new().prefix("sbs-big.").tempdir()?;
    let nb = NbServer::start(dir.path()).map_err(|e| format!("{e:#}"))?;
    let t = Instant::now();
    populate_big(&nb, mb)?;
    eprintln!("  populated {mb} MB of Logical_Switch rows in {:.1} s", t.elapsed().as_secs_f64());
    let (proxy, remote) = start_proxy(&nb.tcp_remote())?;
    let pid = proxy.pid();
    let idle_rss = status_kb(pid, "VmRSS:").unwrap_or(0);
    let idle_hwm = status_kb(pid, "VmHWM:").unwrap_or(0);

    let peak_rss = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak_rss, done) = (peak_rss.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kb) = status_kb(pid, "VmRSS:") {
                    peak_rss.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // The slow-ish client: 64 KiB reads with a 1 ms pause after each (≤ 64 MB/s).
    let mut s = tcp(&remote)?;
    let req = json!({"id": 1, "method": "monitor_cond",
        "params": ["OVN_Northbound", "big", {"Logical_Switch": [{"columns": ["name", "external_ids"]}]}]});
    s.write_all(&serde_json::to_vec(&req)?)?;
    let t = Instant::now();
    let mut scanner = Scanner::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err("proxy closed the connection during the big reply".into());
        }
        total += n;
        if let Some(end) = scanner.scan(&buf[..n])? {
            total -= n - end;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = t.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let hwm = status_kb(pid, "VmHWM:").unwrap_or(0);
    drop(s);
    drop(proxy);
    Ok(format!(
        "monitor_cond reply of {:.1} MB ({total} bytes) read by a slow client in {:.1} s ({:.0} MB/s) through the proxy: \
         proxy VmRSS {:.1} MB idle, {:.1} MB at most while relaying (sampled every 50 ms); VmHWM {:.1} MB before, {:.1} MB after \
         ({:.3}% of the message)",
        total as f64 / 1e6,
        took.as_secs_f64(),
        total as f64 / 1e6 / took.as_secs_f64(),
        idle_rss as f64 / 1024.0,
        peak_rss.load(Ordering::Relaxed) as f64 / 1024.0,
        idle_hwm as f64 / 1024.0,
        hwm as f64 / 1024.0,
        hwm as f64 * 1024.0 / total as f64 * 100.0,
    ))
}

// ---------------------------------------------------------------------------------------------
// Bulk transactions: what a CMS sends when it tags a batch of ports, or resynchronises.

const BULK_LEFTOVERS: usize = 500;

fn str_map(pairs: &[(&str, &str)]) -> Value {
    json!(["map", pairs.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()])
}

/// The bulk database: `n` target ports on switch `bulk` (`requested-chassis=hv1`, tagged by
/// nothing but `bulk=target`) and [`BULK_LEFTOVERS`] ports with a finished migration's leftover
/// tags, so the proxy's cache is never free of tags (its fast path does not apply). The
/// targets' uuids.
fn populate_bulk(nb: &NbServer, n: usize) -> Result<Vec<String>> {
    let mut rpc = Rpc::unix(&nb.socket())?;
    let mut refs = Vec::new();
    for chunk in (0..n + BULK_LEFTOVERS).collect::<Vec<_>>().chunks(1000) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|&i| {
                let (name, ext, rc) = if i < n {
                    (format!("b{i}"), str_map(&[("bulk", "target")]), "hv1")
                } else {
                    let ext = str_map(&[("migration-destination", "hv2"), ("migration-phase", "succeeded")]);
                    (format!("left{i}"), ext, "hv2")
                };
                json!({"op": "insert", "table": "Logical_Switch_Port", "uuid-name": format!("p{i}"),
                       "row": {"name": name, "external_ids": ext, "options": str_map(&[("requested-chassis", rc)])}})
            })
            .collect();
        refs.extend(chunk.iter().map(|i| json!(["named-uuid", format!("p{i}")])));
        let mut ops = ops;
        ops.push(json!({"op": "insert", "table": "Logical_Switch", "uuid-name": "sw",
                        "row": {"name": format!("bulk{}", chunk[0])}}));
        ops.push(json!({"op": "mutate", "table": "Logical_Switch", "where": [["_uuid", "==", ["named-uuid", "sw"]]],
                        "mutations": [["ports", "insert", ["set", refs.split_off(0)]]]}));
        rpc.transact(ops)?;
    }
    let select = json!({"op": "select", "table": "Logical_Switch_Port",
        "where": [["external_ids", "includes", str_map(&[("bulk", "target")])]], "columns": ["_uuid"]});
    let rows = rpc.transact(vec![select])?;
    let uuids: Vec<String> = rows[0]["rows"]
        .as_array()
        .ok_or("no rows")?
        .iter()
        .filter_map(|r| r["_uuid"][1].as_str().map(String::from))
        .collect();
    if uuids.len() != n {
        return Err(format!("{} target ports, want {n}", uuids.len()).into());
    }
    Ok(uuids)
}

/// ms for one transaction of `ops` on `remote`, after `reset` went directly to `db` (untimed).
fn timed_transact(db: &std::path::Path, reset: &[Value], remote: &str, ops: &[Value]) -> Result<f64> {
    Rpc::unix(db)?.transact(reset.to_vec())?;
    let mut rpc = Rpc::connect(remote)?;
    rpc.call("echo", json!([]))?;
    let t = Instant::now();
    rpc.transact(ops.to_vec())?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// The bulk rows: `n` ports tagged by one transaction in three shapes, `inserted` untagged
/// ports inserted by one; and the proxy's VmRSS 10 s after each, against its settled size.
fn bulk(runs: usize, n: usize, inserted: usize) -> Result<(Vec<Row>, Vec<String>)> {
    eprintln!("bulk: {n} ports to tag, {inserted} to insert");
    let dir = tempfile::Builder::new().prefix("sbs-bulk.").tempdir()?;
    let nb = NbServer::start(dir.path()).map_err(|e| format!("{e:#}"))?;
    let uuids = populate_bulk(&nb, n)?;
    let (_socat, socat) = start_socat(&nb.tcp_remote())?;
    let mut paths = Paths::new(nb.tcp_remote(), socat, dir.path(), n + BULK_LEFTOVERS);
    paths.rss_after = Some(Duration::from_secs(10));
    let target = json!([["external_ids", "includes", str_map(&[("bulk", "target")])]]);
    let untag = vec![json!({"op": "update", "table": "Logical_Switch_Port", "where": target,
        "row": {"external_ids": str_map(&[("bulk", "target")]), "options": str_map(&[("requested-chassis", "hv1")])}})];
    let by_uuid = |u: &str| json!([["_uuid", "==", ["uuid", u]]]);
    let dst = || str_map(&[("migration-destination", "hv2")]);
    let shapes: Vec<(String, Vec<Value>)> = vec![
        (
            format!("{n} ports tagged in one transaction: {n} `mutate`s by uuid"),
            uuids
                .iter()
                .map(|u| json!({"op": "mutate", "table": "Logical_Switch_Port", "where": by_uuid(u),
                                "mutations": [["external_ids", "insert", dst()]]}))
                .collect(),
        ),
        (
            format!("{n} ports tagged in one transaction: {n} whole-map `update`s by uuid"),
            uuids
                .iter()
                .map(|u| json!({"op": "update", "table": "Logical_Switch_Port", "where": by_uuid(u),
                    "row": {"external_ids": str_map(&[("bulk", "target"), ("migration-destination", "hv2")])}}))
                .collect(),
        ),
        (
            // What the proxy sends upstream for the first shape: each port's fix appended,
            // conditional on the state it assumed. The server's own cost of that is the floor
            // of the proxy's ratio on these shapes.
            format!("the same {n} `mutate`s with the {n} fixes the proxy appends, as it sends them upstream"),
            uuids
                .iter()
                .map(|u| json!({"op": "mutate", "table": "Logical_Switch_Port", "where": by_uuid(u),
                                "mutations": [["external_ids", "insert", dst()]]}))
                .chain(uuids.iter().map(|u| json!({"op": "mutate", "table": "Logical_Switch_Port",
                    "where": [["_uuid", "==", ["uuid", u]], ["options", "includes", str_map(&[("requested-chassis", "hv1")])],
                              ["external_ids", "==", str_map(&[("bulk", "target"), ("migration-destination", "hv2")])]],
                    "mutations": [["options", "delete", ["set", ["requested-chassis", "activation-strategy"]]],
                                  ["options", "insert", str_map(&[("requested-chassis", "hv1,hv2"), ("activation-strategy", "rarp")])]]})))
                .collect(),
        ),
        (
            format!("{n} ports tagged in one transaction: one `mutate` matching every port"),
            vec![json!({"op": "mutate", "table": "Logical_Switch_Port", "where": [],
                        "mutations": [["external_ids", "insert", dst()]]})],
        ),
    ];
    let mut rows = Vec::new();
    let mut rss = Vec::new();
    let mut measure = |paths: &mut Paths, what: String, reset: &[Value], ops: &[Value]| -> Result<()> {
        eprintln!("  {what}");
        let db = nb.socket();
        let (db2, reset2) = (db.clone(), reset.to_vec());
        paths.before_proxy = Some(Box::new(move || Rpc::unix(&db2)?.transact(reset2.clone()).map(|_| ())));
        let row = paths.measure(runs, false, false, |r| timed_transact(&db, reset, r, ops))?;
        rss.push(format!(
            "{what}: proxy VmRSS {:.1} MB settled before, {:.1} MB 10 s after the transaction; a fresh proxy on \
             the state it left settles at {:.1} MB ({:.2}×)",
            paths.proxy_idle_rss_kb as f64 / 1024.0,
            paths.proxy_rss_after_kb as f64 / 1024.0,
            paths.proxy_fresh_kb as f64 / 1024.0,
            paths.proxy_rss_after_kb as f64 / paths.proxy_fresh_kb.max(1) as f64
        ));
        rows.push(Row::new(what, "ms", 1, row));
        Ok(())
    };
    for (what, ops) in shapes {
        measure(&mut paths, what, &untag, &ops)?;
    }
    let mut ops: Vec<Value> = (0..inserted)
        .map(|i| {
            json!({"op": "insert", "table": "Logical_Switch_Port", "uuid-name": format!("n{i}"),
                "row": {"name": format!("ins{i}"), "addresses": format!("0a:01:00:{:02x}:{:02x}:{:02x} 10.200.{}.{}", i >> 16 & 0xff, i >> 8 & 0xff, i & 0xff, i >> 8 & 0xff, i & 0xff),
                        "external_ids": str_map(&[("pod", &format!("default/pod{i}")), ("vendor", "bench")]),
                        "options": str_map(&[("requested-chassis", &format!("node{}", i % 100))])}})
        })
        .collect();
    let refs: Vec<Value> = (0..inserted).map(|i| json!(["named-uuid", format!("n{i}")])).collect();
    ops.push(json!({"op": "insert", "table": "Logical_Switch", "row": {"name": "bulkins", "ports": ["set", refs]}}));
    let delete =
        vec![json!({"op": "delete", "table": "Logical_Switch", "where": [["name", "==", "bulkins"]]})];
    let mb = serde_json::to_vec(&ops)?.len() as f64 / 1e6;
    measure(
        &mut paths,
        format!("{inserted} untagged ports inserted in one transaction ({mb:.0} MB) on a new switch"),
        &delete,
        &ops,
    )?;
    Ok((rows, rss))
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let runs = env_usize("SBS_RUNS", 3).max(1);
    let sizes: Vec<usize> = std::env::var("SBS_PORTS")
        .unwrap_or_else(|_| "20000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let big_mb = env_usize("SBS_BIG_MB", 500);
    let only = std::env::var("SBS_ONLY").unwrap_or_default();
    let want = |what: &str| only.is_empty() || only.split(',').any(|w| w.trim() == what);
    for tool in ["ovsdb-server", "ovsdb-client", "ovn-nbctl", "socat"] {
        require(tool).map_err(|e| format!("{e:#}"))?;
    }
    let machine = machine();
    eprintln!("side by side: {machine}");

    let dir = tempfile::Builder::new().prefix("sbs.").tempdir()?;
    let nb = NbServer::start(dir.path()).map_err(|e| format!("{e:#}"))?;
    ovn_nbctl(&nb.unix_remote(), &["init"]).map_err(|e| format!("{e:#}"))?;
    let mut rows = Vec::new();
    let mut proxy_rss = Vec::new();
    let mut have = 0;
    for (k, &size) in sizes.iter().enumerate() {
        let t = Instant::now();
        populate_ports(&nb, have, size)?;
        have = size;
        eprintln!("{size} ports populated in {:.1} s", t.elapsed().as_secs_f64());
        let targets = targets(&nb, 51)?;
        let (_socat, socat) = start_socat(&nb.tcp_remote())?;
        let mut paths = Paths::new(nb.tcp_remote(), socat, dir.path(), size);
        // One untimed dump per path: warm caches, check everything answers.
        paths.measure(1, false, false, dump_ms)?;
        if want("dump") {
            // A dump moves by ±10% from run to run on 2 vCPUs: 7 runs at least.
            let dump_runs = runs.max(7);
            eprintln!("  dump × {dump_runs} per path");
            rows.push(Row::new(
                format!("`ovsdb-client dump` Logical_Switch_Port, {size} ports (median of {dump_runs})"),
                "ms",
                1,
                paths.measure(dump_runs, true, false, dump_ms)?,
            ));
        }
        if k == 0 && want("nbctl") {
            eprintln!("  ovn-nbctl ls-list × 50 per run");
            rows.push(Row::new(
                format!("`ovn-nbctl ls-list`, per call (50 calls, {size} ports)"),
                "ms",
                50,
                paths.measure(runs, true, false, |r| nbctl_ms(r, 50, &|_| vec!["ls-list".into()]))?,
            ));
            eprintln!("  ovn-nbctl set × 10 per run");
            let set = |i: usize| {
                ["set", "Logical_Switch_Port", "lsp0", &format!("external_ids:nbctl={i}")]
                    .map(String::from)
                    .to_vec()
            };
            rows.push(Row::new(
                format!("`ovn-nbctl set Logical_Switch_Port`, per call (10 calls, {size} ports)"),
                "ms",
                10,
                paths.measure(runs, true, false, |r| nbctl_ms(r, 10, &set))?,
            ));
        }
        if k == 0 && want("rtt") {
            eprintln!("  round trips");
            for (what, kind, monitored) in [
                ("`echo`", Rtt::Echo, false),
                ("`transact` updating a switch", Rtt::Switch, false),
                ("`transact` updating a port", Rtt::Port, false),
                (
                    "`transact` updating a port, direct and socat with one port monitor attached",
                    Rtt::Port,
                    true,
                ),
            ] {
                rows.push(Row::new(
                    format!("2000 {what}, per round trip"),
                    "µs",
                    2000,
                    paths.measure(runs, false, monitored, |r| rtt_us(r, 2000, kind, &targets))?,
                ));
            }
        }
        if k == 0 && want("tput") {
            eprintln!("  throughput");
            for (what, monitored) in
                [("", false), (", direct and socat with one port monitor attached", true)]
            {
                rows.push(Row::new(
                    format!(
                        "50 clients × 1000 `transact` (each updating a port of its own){what}, throughput"
                    ),
                    "txn/s",
                    50_000,
                    paths.measure(runs, false, monitored, |r| throughput(r, 50, 1000, &targets))?,
                ));
            }
        }
        proxy_rss.push(format!(
            "proxy with {size} ports in its cache: VmRSS {:.1} MB once settled, VmHWM {:.1} MB (highest of its \
             instances); start to settled (initial monitor reply loaded and looked at): {:.2} s (median)",
            paths.proxy_idle_rss_kb as f64 / 1024.0,
            paths.proxy_hwm_kb as f64 / 1024.0,
            median(paths.proxy_settle.clone()),
        ));
    }
    drop(nb);
    if want("bulk") {
        let (bulk_rows, rss) = bulk(runs, env_usize("SBS_BULK", 5000), env_usize("SBS_INSERT", 60_000))?;
        rows.extend(bulk_rows);
        proxy_rss.extend(rss);
    }
    let big = if big_mb > 0 && want("rss") {
        eprintln!("big monitor reply: {big_mb} MB");
        Some(rss_under_big_reply(big_mb)?)
    } else {
        None
    };

    println!();
    println!("Machine: {machine}");
    println!();
    print_table(&rows);
    println!();
    for r in &rows {
        if r.unit == "µs" {
            let v = r.values();
            println!(
                "- {}: socat adds {:.1} µs, the ovsdb relay {:.1} µs, the proxy {:.1} µs",
                r.what,
                v[1] - v[0],
                v[2] - v[0],
                v[3] - v[0]
            );
            let runs = &r.measured.runs;
            let per_run: Vec<String> =
                runs[3].iter().zip(&runs[1]).map(|(p, s)| format!("{:+.1}", p - s)).collect();
            let per_op = |ms: f64| ms * 1e3 / r.ops as f64;
            let threads: Vec<String> = r
                .proxy_threads()
                .into_iter()
                .filter(|t| per_op(t.1) >= 0.1)
                .map(|(name, run, wait)| {
                    format!("`{name}` on a CPU {:.1} µs, waiting for one {:.1} µs", per_op(run), per_op(wait))
                })
                .collect();
            println!("  - the proxy minus socat, run by run: {} µs", per_run.join(", "));
            println!("  - the proxy's threads per op: {}", threads.join("; "));
        }
    }
    for l in &proxy_rss {
        println!("- {l}");
    }
    if let Some(b) = big {
        println!("- {b}");
    }
    Ok(())
}
