//! Scale and chaos: the load test's 20 writers (through the proxy) while the proxy carries a
//! large table with many leftover tags, writers that bypass it tag thousands of ports at once,
//! and the database, the proxy and a cluster leader are killed (SIGKILL) at moments chosen by
//! a seeded random schedule. At the end every port must be what the contract and the
//! acknowledged writes say, and the proxy must have stayed responsive with bounded memory.
//!
//! Sizes and length come from the environment (the defaults are the short version CI runs):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `CHAOS_PORTS` | 5000 | ports besides the writers' (one switch) |
//! | `CHAOS_TAGGED` | half of them | of those, tagged: 9 in 10 leftovers of finished migrations, 1 in 10 in progress |
//! | `CHAOS_BURST` | 1000 | ports tagged at once by a writer that bypasses the proxy |
//! | `CHAOS_SECS` | 15 | how long the writers run |
//! | `CHAOS_SEED` | 1 | the schedule's seed |
//! | `CHAOS_LATENCY_MS` | 250 | bound on the longest `/healthz`, and on an echo through the proxy beyond the longest direct one |
//! | `CHAOS_DEBUG` | unset | set: print the proxy's log up to the moment it became the active reconciler |
//! | `CHAOS_LOG` | unset | a file: on failure, the whole proxy log (every instance) is written there |
//!
//! The two tests take turns (each loads both cores).
//!
//! A writer whose connection is cut (the proxy or the database killed) cannot know whether its
//! last transaction committed; it finds out, as a real client would, by reading: every writer
//! transaction also sets a sequence number on a switch of the writer's own, read back after
//! the writer's next committed write has settled the log.

use crate::common::model::*;
use crate::common::*;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ovn_nb_lab::sandbox::NbCluster;
use serde_json::{json, Value};

struct Knobs {
    ports: usize,
    tagged: usize,
    burst: usize,
    secs: u64,
    seed: u64,
    /// Bound on the longest `/healthz`, and on what an echo through the proxy may take beyond
    /// the longest direct one (generous by default: a debug build on two busy cores; the full
    /// run sets 50).
    latency_ms: u64,
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn knobs() -> Knobs {
    let ports = env("CHAOS_PORTS", 5000) as usize;
    Knobs {
        ports,
        tagged: env("CHAOS_TAGGED", ports as u64 / 2) as usize,
        burst: env("CHAOS_BURST", 1000) as usize,
        secs: env("CHAOS_SECS", 15),
        seed: env("CHAOS_SEED", 1),
        latency_ms: env("CHAOS_LATENCY_MS", 250),
    }
}

// ---------------------------------------------------------------------------------------------
// The ports that are not the writers': leftovers, migrations in progress, and the ones bursts tag.

/// What a non-writer port `s<i>` is now: its options and external_ids.
#[derive(Debug, Clone)]
struct Static {
    options: StrMap,
    ext: StrMap,
}

fn initial_static(i: usize, tagged: usize) -> Static {
    let mut s = Static { options: StrMap::new(), ext: StrMap::new() };
    let (src, dst) = (hv(i), hv(i + 1));
    s.ext.insert("pod".into(), format!("ns/s{i}"));
    if i < tagged && !i.is_multiple_of(10) {
        // A leftover of a finished migration.
        s.options.insert(RC.into(), dst.clone());
        s.ext.insert(DST.into(), dst);
        s.ext.insert(PHASE.into(), "Succeeded".into());
    } else if i < tagged {
        s.options.insert(RC.into(), format!("{src},{dst}"));
        s.options.insert(AS.into(), "rarp".into());
        s.ext.insert(DST.into(), dst);
    } else {
        s.options.insert(RC.into(), src);
    }
    s
}

fn pairs_of(m: &StrMap) -> Vec<(String, String)> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

// ---------------------------------------------------------------------------------------------
// The database: one server, or a cluster.

enum Db {
    One(Nb),
    Cluster { c: NbCluster, _dir: tempfile::TempDir },
}

impl Db {
    /// What the proxy is given.
    fn upstream(&self) -> String {
        match self {
            Db::One(nb) => nb.server.unix_remote(),
            Db::Cluster { c, .. } => (0..c.len()).map(|i| c.unix_remote(i)).collect::<Vec<_>>().join(","),
        }
    }

    /// A socket of the database for direct writes (the leader in a cluster).
    fn writable(&self) -> PathBuf {
        match self {
            Db::One(nb) => nb.server.socket(),
            Db::Cluster { c, .. } => c.socket(c.leader().unwrap_or_else(|e| panic!("{e:#}"))),
        }
    }

    /// The sockets for the direct echo probes (every member of a cluster: the leader, whichever
    /// it is, is among them).
    fn probe_sockets(&self) -> Vec<PathBuf> {
        match self {
            Db::One(nb) => vec![nb.server.socket()],
            Db::Cluster { c, .. } => (0..c.len()).map(|i| c.socket(i)).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A writer's connection through the proxy, that survives the proxy and the database dying.

struct Reconnecting {
    path: PathBuf,
    raw: Option<Raw>,
    id: u64,
    w: usize,
    seq: u64,
    lost: Arc<AtomicU64>,
}

fn ctl_switch(w: usize) -> String {
    format!("ctl-w{w:02}")
}

fn set_on_ctl(w: usize, key: &str, value: u64) -> Value {
    json!({"op": "mutate", "table": "Logical_Switch", "where": [["name", "==", ctl_switch(w)]],
           "mutations": [["external_ids", "delete", ["set", [key]]], ["external_ids", "insert", ["map", [[key, value.to_string()]]]]]})
}

impl Reconnecting {
    fn connect(&mut self) -> &mut Raw {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.raw.is_none() {
            match std::os::unix::net::UnixStream::connect(&self.path) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
                    self.raw = Some(Raw::from_stream(stream));
                }
                Err(_) => {
                    assert!(Instant::now() < deadline, "the proxy did not come back within 120 s");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        self.raw.as_mut().expect("connected")
    }

    /// One transaction: the reply, or `None` if the connection was lost first.
    fn roundtrip(&mut self, ops: &[Value]) -> Option<Value> {
        self.id += 1;
        let id = self.id;
        let mut params = vec![json!("OVN_Northbound")];
        params.extend_from_slice(ops);
        let req =
            serde_json::to_vec(&json!({"id": id, "method": "transact", "params": params})).expect("json");
        let raw = self.connect();
        let reply = (|| {
            raw.try_send(&req)?;
            loop {
                let msg: Value = serde_json::from_slice(&raw.try_recv()?).ok()?;
                if msg["method"] == "echo" {
                    let r = json!({"id": msg["id"], "result": msg["params"], "error": null});
                    raw.try_send(&serde_json::to_vec(&r).expect("json"))?;
                } else if msg["id"] == id {
                    return Some(msg);
                }
            }
        })();
        if reply.is_none() {
            self.raw = None;
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        reply
    }

    fn committed(reply: &Value) -> bool {
        reply["error"].is_null()
            && reply["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty() && r.iter().all(|x| x.get("error").is_none()))
    }

    /// Whether transaction `seq` committed, after its connection was lost: a write of this
    /// writer's own is committed first (in a cluster, that settles what was in flight: committed
    /// by the new leader, or dropped), then `seq` is read inside another write, which the leader
    /// executes on its state (a follower may serve a plain read from behind).
    fn verify(&mut self, seq: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.roundtrip(&[set_on_ctl(self.w, "probe", seq)]).is_some_and(|r| Self::committed(&r)) {
                break;
            }
            assert!(Instant::now() < deadline, "writer {}: no write went through for 120 s", self.w);
            std::thread::sleep(Duration::from_millis(50));
        }
        let select = json!({"op": "select", "table": "Logical_Switch", "where": [["name", "==", ctl_switch(self.w)]], "columns": ["external_ids"]});
        loop {
            let read = [set_on_ctl(self.w, "probe", seq + 1_000_000_000), select.clone()];
            if let Some(r) = self.roundtrip(&read).filter(Self::committed) {
                let ext = parse_map(&r["result"][1]["rows"][0]["external_ids"]);
                return ext.get("seq").and_then(|s| s.parse::<u64>().ok()) == Some(seq);
            }
            assert!(Instant::now() < deadline, "writer {}: no read went through", self.w);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Link for Reconnecting {
    fn commit(&mut self, mut ops: Vec<Value>) -> bool {
        self.seq += 1;
        let seq = self.seq;
        ops.push(set_on_ctl(self.w, "seq", seq));
        match self.roundtrip(&ops) {
            Some(reply) => Self::committed(&reply),
            None => self.verify(seq),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Probes: echo through the proxy and directly, the proxy's /healthz, its memory.

/// `GET /healthz` every 20 ms on the proxy's current metrics address; the longest answer.
struct Health {
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<(Duration, u64)>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Health {
    fn start(addr: Arc<Mutex<String>>) -> Health {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(Mutex::new((Duration::ZERO, 0)));
        let (s, w) = (stop.clone(), worst.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let a = addr.lock().expect("lock").clone();
                let t0 = Instant::now();
                if try_get(&a, "/healthz") == Some(200) {
                    let d = t0.elapsed();
                    let mut g = w.lock().expect("lock");
                    g.1 += 1;
                    g.0 = g.0.max(d);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Health { stop, worst, handle: Some(handle) }
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A GET that tolerates the proxy being down: the status, or `None`.
fn try_get(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The run.

/// The proxy, restartable, on a listening socket that stays the same across restarts.
struct ProxyHost {
    upstream: String,
    socket: PathBuf,
    proxy: Option<Proxy>,
    metrics: Arc<Mutex<String>>,
    pid: Arc<AtomicU32>,
    /// The logs of the instances killed so far.
    logs: String,
    starts: usize,
}

impl ProxyHost {
    fn start(&mut self) {
        let listen = format!("--listen=punix:{}", self.socket.display());
        let mut p = Proxy::start(&self.upstream, &[listen.as_str(), "--metrics=127.0.0.1:0"]);
        *self.metrics.lock().expect("lock") = p.metrics_addr();
        self.pid.store(p.pid(), Ordering::Relaxed);
        self.proxy = Some(p);
        self.starts += 1;
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            p.kill9();
            self.logs.push_str(&p.log_text());
            self.logs.push('\n');
        }
    }

    fn log(&self) -> String {
        let mut all = self.logs.clone();
        if let Some(p) = &self.proxy {
            all.push_str(&p.log_text());
        }
        all
    }
}

#[derive(Debug, Default)]
struct Figures {
    kills_proxy: usize,
    kills_db: usize,
    kills_leader: usize,
    bursts: Vec<(usize, Duration, bool)>,
}

/// Tags `n` untagged static ports directly, in transactions of 100 (rows by uuid): the ports.
fn burst(
    db: &Db,
    statics: &mut [Static],
    uuids: &HashMap<String, String>,
    next: &mut usize,
    n: usize,
) -> Vec<usize> {
    let socket = db.writable();
    let mut raw = Raw::connect(&socket);
    raw.stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let mut tagged = Vec::new();
    while tagged.len() < n && *next < statics.len() {
        let i = *next;
        *next += 1;
        tagged.push(i);
    }
    for (k, chunk) in tagged.chunks(100).enumerate() {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|&i| {
                json!({"op": "mutate", "table": "Logical_Switch_Port", "where": [["_uuid", "==", ["uuid", uuids[&format!("s{i}")]]]],
                       "mutations": [["external_ids", "insert", ["map", [[DST, hv(i + 2)]]]]]})
            })
            .collect();
        let r = transact_on(&mut raw, 1000 + k as u64, ops);
        assert!(
            r["result"].as_array().is_some_and(|a| a.iter().all(|x| x.get("error").is_none())),
            "burst refused: {r}"
        );
    }
    for &i in &tagged {
        let s = &mut statics[i];
        let src = s.options[RC].clone();
        s.ext.insert(DST.into(), hv(i + 2));
        s.options.insert(RC.into(), format!("{src},{}", hv(i + 2)));
        s.options.insert(AS.into(), "rarp".into());
    }
    tagged
}

fn wrong_statics(actual: &Ports, statics: &[Static], which: impl Iterator<Item = usize>) -> Vec<String> {
    which
        .filter_map(|i| {
            let name = format!("s{i}");
            let want = (&statics[i].options, &statics[i].ext);
            match actual.get(&name) {
                Some((o, e)) if (o, e) == want => None,
                got => Some(format!("{name}:\n  want {want:?}\n  got  {got:?}")),
            }
        })
        .collect()
}

fn run(mut db: Db, cluster: bool) {
    let k = knobs();
    let t_seed = Instant::now();
    // The writers' ports, their control switches, the static ports.
    let (initial, ops) = seed_writers("sw0", true);
    let socket = db.writable();
    Direct { raw: Raw::connect(&socket), id: 0 }.commit(ops);
    let ctl: Vec<Value> = (0..WRITERS)
        .map(|w| json!({"op": "insert", "table": "Logical_Switch", "row": {"name": ctl_switch(w)}}))
        .collect();
    Direct { raw: Raw::connect(&socket), id: 0 }.commit(ctl);
    let mut statics: Vec<Static> = (0..k.ports).map(|i| initial_static(i, k.tagged)).collect();
    bulk_ports(&socket, "big", "s", 0..k.ports, |i| {
        (pairs_of(&statics[i].options), pairs_of(&statics[i].ext))
    });
    let uuids = Arc::new(port_uuids(&socket));
    let seeded = t_seed.elapsed();
    let mut next_untagged = k.tagged;

    let dir = tempfile::Builder::new().prefix("nbproxy-chaos.").tempdir().expect("tmp");
    let mut host = ProxyHost {
        upstream: db.upstream(),
        socket: dir.path().join("proxy.sock"),
        proxy: None,
        metrics: Arc::new(Mutex::new(String::new())),
        pid: Arc::new(AtomicU32::new(0)),
        logs: String::new(),
        starts: 0,
    };
    let t0 = Instant::now();
    host.start();
    host.proxy
        .as_mut()
        .expect("proxy")
        .wait_log("this proxy is the active reconciler", Duration::from_secs(120));
    let ready = t0.elapsed();
    if std::env::var("CHAOS_DEBUG").is_ok() {
        eprintln!("{}", host.proxy.as_ref().expect("proxy").log_text());
    }

    // Probes.
    let through = EchoProbe::start(&host.socket);
    let direct: Vec<EchoProbe> = db.probe_sockets().iter().map(|p| EchoProbe::start(p)).collect();
    let health = Health::start(host.metrics.clone());
    let rss_max = Arc::new(AtomicU64::new(0));
    let stop_rss = Arc::new(AtomicBool::new(false));
    let rss_thread = {
        let (pid, max, stop) = (host.pid.clone(), rss_max.clone(), stop_rss.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kb) = rss_kb(pid.load(Ordering::Relaxed)) {
                    max.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // The writers.
    let stop = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = initial
        .into_iter()
        .enumerate()
        .map(|(w, ports)| {
            let (stop, path, lost, uuids) = (stop.clone(), host.socket.clone(), lost.clone(), uuids.clone());
            std::thread::spawn(move || {
                let mut link = Reconnecting { path, raw: None, id: 0, w, seq: 0, lost };
                let mut writer = Writer::new(w, ports);
                writer.uuids = Some(uuids);
                writer.run(&mut link, &stop);
                writer
            })
        })
        .collect();

    // The schedule: bursts, kills, each at a moment drawn from the seed.
    let mut rng = Rng(0x5eed ^ k.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut figures = Figures::default();
    let started = Instant::now();
    let events: Vec<&str> = if cluster {
        vec!["burst", "leader", "burst", "proxy", "follower", "leader"]
    } else {
        vec!["burst", "proxy", "burst", "db", "burst", "proxy-with-burst", "db"]
    };
    let slot = Duration::from_secs(k.secs) / events.len() as u32;
    for (n, event) in events.iter().enumerate() {
        let at =
            slot * n as u32 + Duration::from_millis(rng.below(slot.as_millis().max(1) as usize) as u64 / 2);
        while started.elapsed() < at {
            std::thread::sleep(Duration::from_millis(20));
        }
        match *event {
            "burst" => {
                let t = Instant::now();
                let ports = burst(&db, &mut statics, &uuids, &mut next_untagged, k.burst);
                let fixed = wait_fixed(&db, &statics, &uuids, &ports, Duration::from_secs(120));
                figures.bursts.push((ports.len(), t.elapsed(), fixed));
            }
            "proxy" | "proxy-with-burst" => {
                host.kill();
                figures.kills_proxy += 1;
                std::thread::sleep(Duration::from_millis(200 + rng.below(800) as u64));
                let ports = if *event == "proxy-with-burst" {
                    burst(&db, &mut statics, &uuids, &mut next_untagged, k.burst)
                } else {
                    Vec::new()
                };
                let t = Instant::now();
                host.start();
                if !ports.is_empty() {
                    let fixed = wait_fixed(&db, &statics, &uuids, &ports, Duration::from_secs(120));
                    figures.bursts.push((ports.len(), t.elapsed(), fixed));
                }
            }
            "db" => {
                let Db::One(nb) = &mut db else { unreachable!() };
                let down = Duration::from_millis(200 + rng.below(1500) as u64);
                nb.server
                    .restart_with(|_| {
                        std::thread::sleep(down);
                        Ok(())
                    })
                    .unwrap_or_else(|e| panic!("{e:#}"));
                figures.kills_db += 1;
            }
            "leader" | "follower" => {
                let Db::Cluster { c, .. } = &mut db else { unreachable!() };
                let leader = c.leader().unwrap_or_else(|e| panic!("{e:#}"));
                let victim = if *event == "leader" { leader } else { (leader + 1 + rng.below(2)) % c.len() };
                c.kill(victim);
                if *event == "leader" {
                    figures.kills_leader += 1;
                } else {
                    figures.kills_db += 1;
                }
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500) as u64));
                c.restart_member(victim).unwrap_or_else(|e| panic!("{e:#}"));
            }
            other => unreachable!("{other}"),
        }
    }
    while started.elapsed() < Duration::from_secs(k.secs) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let writers: Vec<Writer> = writers
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| panic!("a writer failed (see above)")))
        .collect();
    let ran = started.elapsed();
    let (echo_worst, echoes) = through.worst();
    let direct_worst = direct.iter().map(|d| d.worst().0).max().unwrap_or_default();
    let (health_worst, healths) = *health.worst.lock().expect("lock");
    drop((through, direct, health));
    stop_rss.store(true, Ordering::Relaxed);
    let _ = rss_thread.join();
    let settled_rss = rss_kb(host.pid.load(Ordering::Relaxed)).unwrap_or(0);

    // Every port as the contract and the acknowledged writes say, once the reconciler settles.
    let expected = expected(&writers);
    let deadline = Instant::now() + Duration::from_secs(120);
    let t_settle = Instant::now();
    let (wrong, total_ports) = loop {
        let actual = read_ports(&db.writable());
        let mut bad: Vec<String> = expected
            .iter()
            .filter(|(port, want)| actual.get(*port) != Some(want))
            .map(|(port, want)| format!("{port}:\n  want {want:?}\n  got  {:?}", actual.get(port)))
            .collect();
        bad.extend(wrong_statics(&actual, &statics, 0..statics.len()));
        if bad.is_empty() || Instant::now() > deadline {
            break (bad, actual.len());
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let log = host.log();
    let count = |needle: &str| {
        log.lines().filter(|l| l.contains("ovn_nb_proxy::audit") && l.contains(needle)).count()
    };
    let total = total(&writers);
    let bursts: Vec<String> = figures
        .bursts
        .iter()
        .map(|(n, d, ok)| {
            format!("{n} in {:.2} s{}", d.as_secs_f64(), if *ok { "" } else { " (NOT all fixed)" })
        })
        .collect();
    println!(
        "chaos ({}): {} ports ({} tagged by the seed, {} more by bursts) + {} writers' ports, seeded in {:.1} s, \
         proxy ready in {:.2} s; {WRITERS} writers for {:.1} s: {} committed transactions ({total}), {} connections lost \
         to kills; kills: proxy {}, database {}, leader {}; bursts fixed: [{}]; proxy: {} rewrites, {} reconciles, \
         {} starts; longest echo through the proxy {:.1} ms ({echoes} probes), directly {:.1} ms, longest /healthz \
         {:.1} ms ({healths} probes); proxy RSS max {} MB, at the end {} MB; ports wrong after {:.1} s: {} of {}",
        if cluster { "3-member cluster" } else { "one server" },
        k.ports,
        k.tagged,
        next_untagged - k.tagged,
        expected.len(),
        seeded.as_secs_f64(),
        ready.as_secs_f64(),
        ran.as_secs_f64(),
        total.transactions,
        lost.load(Ordering::Relaxed),
        figures.kills_proxy,
        figures.kills_db,
        figures.kills_leader,
        bursts.join(", "),
        count(": rewrite "),
        count(": reconcile "),
        host.starts,
        echo_worst.as_secs_f64() * 1000.0,
        direct_worst.as_secs_f64() * 1000.0,
        health_worst.as_secs_f64() * 1000.0,
        rss_max.load(Ordering::Relaxed) / 1024,
        settled_rss / 1024,
        t_settle.elapsed().as_secs_f64(),
        wrong.len(),
        total_ports,
    );
    if let (false, Ok(path)) = (wrong.is_empty(), std::env::var("CHAOS_LOG")) {
        let _ = std::fs::write(&path, &log);
    }
    assert!(
        wrong.is_empty(),
        "{} ports differ from what the contract and the acknowledged writes say:\n{}",
        wrong.len(),
        explain(&wrong, &writers, &log)
    );
    assert!(figures.bursts.iter().all(|b| b.2), "a burst was not fixed within 120 s");
    assert!(total.started > 0 && total.unaware_updates > 0, "the writers ran");
    // The proxy's own event loop (/healthz), and what it adds to the database's own latency.
    let bound = Duration::from_millis(k.latency_ms);
    assert!(
        healths > 10 && health_worst < bound,
        "/healthz took {health_worst:?} (bound {bound:?}): the event loop stalled"
    );
    assert!(
        echo_worst < direct_worst + bound,
        "an echo through the proxy took {echo_worst:?}, directly at most {direct_worst:?} (bound: + {bound:?})"
    );
    let bound_kb = 64 * 1024 + 4 * (k.ports as u64 + 1000);
    assert!(
        rss_max.load(Ordering::Relaxed) < bound_kb,
        "the proxy's memory reached {} kB (bound {bound_kb} kB)",
        rss_max.load(Ordering::Relaxed)
    );
}

/// Waits until the given static ports are as expected; whether they got there in time.
fn wait_fixed(
    db: &Db,
    statics: &[Static],
    uuids: &HashMap<String, String>,
    ports: &[usize],
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    let ids: Vec<&str> = ports.iter().map(|i| uuids[&format!("s{i}")].as_str()).collect();
    loop {
        let rows = read_rows(&db.writable(), &ids);
        let fixed = ports.iter().zip(&rows).all(|(&i, row)| {
            row.as_ref().is_some_and(|(o, e)| *o == statics[i].options && *e == statics[i].ext)
        });
        if fixed {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_server_scale_bursts_and_kills() {
    let _turn = heavy();
    run(Db::One(nb()), false);
}

#[test]
fn cluster_leader_killed_during_migrations() {
    let _turn = heavy();
    let dir = tempfile::Builder::new().prefix("nbproxy-chaos-cluster.").tempdir().expect("tmp");
    let c = NbCluster::start(dir.path(), 3).unwrap_or_else(|e| panic!("cluster: {e:#}"));
    let leader = c.leader().expect("leader");
    ovn_nbctl(&c.unix_remote(leader), &["init"]).expect("init");
    run(Db::Cluster { c, _dir: dir }, true);
}
