//! Side by side: the same work against three paths in one run, reported as ratios to direct.
//!
//! * **direct**: the NB `ovsdb-server`'s own TCP listener;
//! * **relay**: `socat TCP-LISTEN:…,nodelay,fork,reuseaddr TCP:…,nodelay`, a plain byte relay;
//! * **proxy**: the release binary (`ovn-nb-proxy --upstream tcp:… --listen ptcp:0`).
//!
//! Every path is TCP on 127.0.0.1, so the proxy and the relay each add one loopback hop.
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
//! `SBS_RUNS` (default 3): interleaved runs per measurement, medians reported.
//! `SBS_PORTS` (default `20000,100000`): database sizes for the dumps; the other measurements use
//! the first size. `SBS_BIG_MB` (default 500): size of the monitor reply for the RSS measurement;
//! 0 skips it. `SBS_ONLY` (default all): a comma list of `dump`, `nbctl`, `rtt`, `tput`, `rss`.
//! `SBS_PROXY_THREADS`: the proxy's `--threads` (default: the proxy's default, 1).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ovn_nb_proxy::sandbox::{ovn_nbctl, require, NbServer};
use ovn_nb_proxy::wire::{FrameCodec, Scanner};
use serde_json::{json, Value};
use tokio_util::codec::Decoder;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

// ---------------------------------------------------------------------------------------------
// A minimal blocking JSON-RPC client (answers the server's echo probes).

struct Rpc<S> {
    s: S,
    codec: FrameCodec,
    buf: BytesMut,
    next_id: u64,
}

impl<S: Read + Write> Rpc<S> {
    fn new(s: S) -> Self {
        Rpc { s, codec: FrameCodec::new(usize::MAX), buf: BytesMut::with_capacity(64 * 1024), next_id: 1 }
    }

    fn recv(&mut self) -> Result<Value> {
        loop {
            if let Some(chunk) = self.codec.decode(&mut self.buf)? {
                return Ok(serde_json::from_slice(chunk.bytes())?);
            }
            let mut tmp = [0u8; 64 * 1024];
            let n = self.s.read(&mut tmp)?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Sends a request and waits for its reply; `error` in the reply is an error.
    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"id": id, "method": method, "params": params});
        self.s.write_all(&serde_json::to_vec(&req)?)?;
        loop {
            let msg = self.recv()?;
            if msg.get("method").and_then(Value::as_str) == Some("echo") {
                let reply = json!({"id": msg["id"], "result": msg["params"], "error": null});
                self.s.write_all(&serde_json::to_vec(&reply)?)?;
                continue;
            }
            if msg.get("id") != Some(&json!(id)) {
                continue;
            }
            if !msg["error"].is_null() {
                return Err(format!("{method}: {}", msg["error"]).into());
            }
            return Ok(msg["result"].clone());
        }
    }

    /// A transaction whose per-op results must carry no error.
    fn transact(&mut self, ops: Vec<Value>) -> Result<Value> {
        let mut params = vec![json!("OVN_Northbound")];
        params.extend(ops);
        let result = self.call("transact", Value::Array(params))?;
        if let Some(bad) = result.as_array().and_then(|r| r.iter().find(|r| r.get("error").is_some())) {
            return Err(format!("transaction failed: {bad}").into());
        }
        Ok(result)
    }
}

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
    let mut rpc = Rpc::new(UnixStream::connect(nb.socket())?);
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
    let mut rpc = Rpc::new(UnixStream::connect(nb.socket())?);
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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy"));
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

/// `ovsdb-client monitor` of the columns the proxy's port cache monitors, once it has received
/// the initial rows.
fn passive_monitor(upstream: &str) -> Result<Daemon> {
    let mut cmd = Command::new(require("ovsdb-client")?);
    cmd.args(["monitor", upstream, "OVN_Northbound", "Logical_Switch_Port", "name,options,external_ids"])
        .arg("--format=csv");
    let mut d = Daemon::spawn(cmd)?;
    // stdout goes to /dev/null; the monitor is up once its connection shows in the server's
    // view of the world, which a short wait covers on loopback.
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = d.child.try_wait()? {
        return Err(format!("ovsdb-client monitor exited: {status}").into());
    }
    Ok(d)
}

fn start_relay(upstream: &str) -> Result<(Daemon, String)> {
    // A port the kernel just handed out: free, barring a race with another process.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let target = upstream.strip_prefix("tcp:").ok_or("not a tcp: remote")?;
    let mut cmd = Command::new(require("socat")?);
    cmd.arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,nodelay,fork,reuseaddr"))
        .arg(format!("TCP:{target},nodelay"));
    let d = Daemon::spawn(cmd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("socat did not start listening".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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

/// ms per `ovn-nbctl` call, over `n` calls.
fn nbctl_ms(remote: &str, n: usize, args: &dyn Fn(usize) -> Vec<String>) -> Result<f64> {
    let db = format!("--db={remote}");
    let mut total = Duration::ZERO;
    for i in 0..n {
        let mut full = vec!["--timeout=60".to_string(), db.clone()];
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
    let mut rpc = Rpc::new(UnixStream::connect(nb.socket())?);
    let uuid_of = |rpc: &mut Rpc<UnixStream>, table: &str, name: &str| -> Result<String> {
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
    let mut rpc = Rpc::new(tcp(remote)?);
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
                let conn = tcp(&remote);
                barrier.wait();
                let mut rpc = Rpc::new(conn?);
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

struct Row {
    what: String,
    unit: &'static str,
    values: [f64; 3],
    /// The proxy's CPU time (all threads) per run, median, and the operations in one run.
    proxy_cpu_ms: f64,
    ops: usize,
}

impl Row {
    fn new(what: String, unit: &'static str, ops: usize, (values, proxy_cpu_ms): ([f64; 3], f64)) -> Row {
        Row { what, unit, values, proxy_cpu_ms, ops }
    }
}

/// CPU time a process has used, all threads (ns, from the scheduler's accounting).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

/// The three paths to one database. The proxy runs only while it is measured: its own port
/// monitor costs the server work on every port write, which must not slow the other paths.
struct Paths {
    upstream: String,
    relay: String,
    /// Highest VmHWM of any proxy instance (kB).
    proxy_hwm_kb: u64,
    /// VmRSS of the last proxy instance once settled (kB), and how long it took to settle.
    proxy_idle_rss_kb: u64,
    proxy_settle: Vec<f64>,
}

impl Paths {
    /// Runs `f` for each path, `runs` times interleaved; the medians, and the proxy's CPU time
    /// (all threads) per run, median, in ms.
    ///
    /// With `warm`, each timed call follows an untimed one on the same path: the first big
    /// allocation after another process freed hundreds of MB (the proxy loading a large cache,
    /// or exiting) costs the client up to a second more system time on this VM, whatever path
    /// it uses.
    ///
    /// With `monitored`, direct and relay runs have a passive `ovsdb-client monitor` of the
    /// port table's `name`, `options`, `external_ids` attached: the same work per port write on
    /// the server (and on the machine) as the proxy's own port monitor brings.
    fn measure(
        &mut self,
        runs: usize,
        warm: bool,
        monitored: bool,
        mut f: impl FnMut(&str) -> Result<f64>,
    ) -> Result<([f64; 3], f64)> {
        let mut samples: [Vec<f64>; 3] = Default::default();
        let mut cpu = Vec::new();
        let timed = |f: &mut dyn FnMut(&str) -> Result<f64>, r: &str| -> Result<f64> {
            if warm {
                f(r)?;
            }
            f(r)
        };
        for _ in 0..runs {
            let monitor = if monitored { Some(passive_monitor(&self.upstream)?) } else { None };
            samples[0].push(timed(&mut f, &self.upstream)?);
            samples[1].push(timed(&mut f, &self.relay)?);
            drop(monitor);
            let t = Instant::now();
            let (proxy, remote) = start_proxy(&self.upstream)?;
            self.proxy_settle.push(t.elapsed().as_secs_f64());
            self.proxy_idle_rss_kb = status_kb(proxy.pid(), "VmRSS:").unwrap_or(0);
            if warm {
                f(&remote)?;
            }
            let before = cpu_ns(proxy.pid());
            samples[2].push(f(&remote)?);
            cpu.push((cpu_ns(proxy.pid()) - before) as f64 / 1e6);
            self.proxy_hwm_kb = self.proxy_hwm_kb.max(status_kb(proxy.pid(), "VmHWM:").unwrap_or(0));
        }
        let [a, b, c] = samples;
        Ok(([median(a), median(b), median(c)], median(cpu)))
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "| measurement | direct | relay (socat nodelay) | proxy | relay / direct | proxy / direct | proxy CPU per op |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let [d, s, p] = r.values;
        let fmt = |v: f64| {
            if v >= 100.0 {
                format!("{v:.0} {}", r.unit)
            } else {
                format!("{v:.2} {}", r.unit)
            }
        };
        let cpu_us = r.proxy_cpu_ms * 1e3 / r.ops as f64;
        let cpu =
            if cpu_us >= 1000.0 { format!("{:.1} ms", cpu_us / 1e3) } else { format!("{cpu_us:.1} µs") };
        println!(
            "| {} | {} | {} | {} | {:.3}× | {:.3}× | {cpu} |",
            r.what,
            fmt(d),
            fmt(s),
            fmt(p),
            s / d,
            p / d
        );
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
        let (_relay, relay) = start_relay(&nb.tcp_remote())?;
        let mut paths = Paths {
            upstream: nb.tcp_remote(),
            relay,
            proxy_hwm_kb: 0,
            proxy_idle_rss_kb: 0,
            proxy_settle: Vec::new(),
        };
        // One untimed dump per path: warm caches, check everything answers.
        paths.measure(1, false, false, dump_ms)?;
        if want("dump") {
            let dump_runs = if size > 50_000 { runs } else { runs.max(5) };
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
                    "`transact` updating a port, direct and relay with one port monitor attached",
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
                [("", false), (", direct and relay with one port monitor attached", true)]
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
            println!(
                "- {}: relay adds {:.1} µs, proxy adds {:.1} µs",
                r.what,
                r.values[1] - r.values[0],
                r.values[2] - r.values[0]
            );
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
