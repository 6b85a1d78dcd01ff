//! Test harness: a real NB `ovsdb-server` and the real proxy binary, each in a temp dir, each
//! stopped on drop. No fixed ports: ovsdb-server and the proxy listen on `ptcp:0`, and the
//! ports are read back from their logs. Missing OVN tools fail the test with the package name.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use ovn_nb_lab::sandbox::{eventually, ovn_nbctl, run_tool, NbServer};

pub mod model;

/// A file of `docker/` (YAML) as JSON, read with Python's yaml (Debian package python3-yaml).
pub fn manifest(path: &str) -> serde_json::Value {
    let full = format!("{}/docker/{path}", env!("CARGO_MANIFEST_DIR"));
    let py = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", py, &full])
        .output()
        .expect("python3 with yaml (Debian package python3-yaml)");
    assert!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// A temp dir with an NB server in it. Field order: the server stops before the dir goes.
pub struct Nb {
    pub server: NbServer,
    pub dir: tempfile::TempDir,
}

pub fn nb() -> Nb {
    let dir = tempfile::Builder::new().prefix("nbproxy-test.").tempdir().expect("temp dir");
    let server =
        NbServer::start(dir.path()).unwrap_or_else(|e| panic!("cannot start the NB ovsdb-server: {e:#}"));
    ovn_nbctl(&server.unix_remote(), &["init"]).expect("ovn-nbctl init");
    Nb { server, dir }
}

/// Switch `sw0` with port `vm1` running on hv1 (`requested-chassis=hv1`), written to `db`.
pub fn seed_vm1(db: &str) {
    ovn_nbctl(
        db,
        &[
            "ls-add",
            "sw0",
            "--",
            "lsp-add",
            "sw0",
            "vm1",
            "--",
            "lsp-set-options",
            "vm1",
            "requested-chassis=hv1",
        ],
    )
    .unwrap_or_else(|e| panic!("seeding sw0/vm1: {e:#}"));
}

/// The proxy binary, started with `--listen punix:DIR/proxy.sock --listen ptcp:0` plus `extra`.
pub struct Proxy {
    child: Child,
    /// Removed when the proxy is dropped.
    _dir: tempfile::TempDir,
    pub unix: PathBuf,
    /// The `ovs-appctl` control socket.
    pub ctl: PathBuf,
    pub tcp_port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    pub fn start(upstream: &str, extra: &[&str]) -> Proxy {
        let dir = tempfile::Builder::new().prefix("nbproxy-proxy.").tempdir().expect("temp dir");
        let unix = dir.path().join("proxy.sock");
        let ctl = dir.path().join("ctl.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy"))
            .arg(format!("--upstream={upstream}"))
            .arg(format!("--listen=punix:{}", unix.display()))
            .arg("--listen=ptcp:0")
            .arg(format!("--unixctl={}", ctl.display()))
            .args(["--log", "ovn_nb_proxy=debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the proxy binary");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        let mut proxy = Proxy { child, _dir: dir, unix, ctl, tcp_port: 0, log };
        // `listen=ptcp:PORT:IP` in text logs, `"listen":"ptcp:PORT:IP"` in JSON logs.
        let line = proxy.wait_log("ptcp:", Duration::from_secs(10));
        proxy.tcp_port = line
            .split("ptcp:")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        proxy
    }

    pub fn unix_remote(&self) -> String {
        format!("unix:{}", self.unix.display())
    }

    pub fn tcp_remote(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.tcp_port)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_log(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.log.lock().expect("log lock").iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("proxy exited ({status}) before logging {needle:?}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "no log line {needle:?} within {within:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `ovs-appctl -t CTL ARGS…`: its output, or its error text.
    pub fn appctl(&self, args: &[&str]) -> Result<String, String> {
        let exe = ovn_nb_lab::sandbox::require("ovs-appctl").unwrap_or_else(|e| panic!("{e:#}"));
        let out = Command::new(exe).arg("-t").arg(&self.ctl).args(args).output().expect("run ovs-appctl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tests that load both cores for long (chaos, load, scale, real packets) take turns: in one
/// test binary they would otherwise run side by side and starve each other's deadlines.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A raw JSON-RPC connection to a unix socket, reading whole messages with the crate's codec.
pub struct Raw {
    pub stream: UnixStream,
    codec: ovn_nb_proxy::wire::FrameCodec,
    buf: bytes::BytesMut,
}

impl Raw {
    pub fn connect(path: &Path) -> Raw {
        let stream = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        Raw { stream, codec: ovn_nb_proxy::wire::FrameCodec::new(usize::MAX), buf: bytes::BytesMut::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next whole message as a JSON value; panics on EOF or timeout.
    pub fn recv(&mut self) -> serde_json::Value {
        let raw = self.recv_raw().unwrap_or_else(|| panic!("connection closed while waiting for a message"));
        serde_json::from_slice(&raw).expect("valid JSON from the server")
    }

    /// The next whole message as bytes, or None at end of stream.
    pub fn recv_raw(&mut self) -> Option<Vec<u8>> {
        use tokio_util::codec::Decoder;
        loop {
            if let Some(chunk) = self.codec.decode(&mut self.buf).expect("framing") {
                return Some(chunk.bytes().to_vec());
            }
            let mut tmp = [0u8; 65536];
            let n = self.stream.read(&mut tmp).expect("read");
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Reads until end of stream (the peer closed), returning what came; panics on timeout.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = self.buf.split().to_vec();
        self.stream.read_to_end(&mut rest).expect("read to end");
        rest
    }
}

/// `ovsdb-client` with a timeout, so a broken proxy fails the test instead of hanging it.
pub fn ovsdb_client(args: &[&str]) -> String {
    let mut full = vec!["--timeout=20"];
    full.extend_from_slice(args);
    run_tool("ovsdb-client", &full).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A long-running tool (monitor, lock) whose stdout is collected line by line; killed on drop.
pub struct Watcher {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watcher {
    pub fn start(tool: &str, args: &[&str]) -> Watcher {
        let exe = ovn_nb_lab::sandbox::require(tool).unwrap_or_else(|e| panic!("{e:#}"));
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push(l);
            }
        });
        Watcher { child, lines }
    }

    pub fn text(&self) -> String {
        self.lines.lock().expect("lock").join("\n")
    }

    pub fn wait_for(&self, needle: &str) {
        eventually(&format!("output containing {needle:?}; got:\n{}", self.text()), || {
            self.text().contains(needle)
        });
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET path` on an HTTP endpoint: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// The value of one sample line of a Prometheus text, e.g.
/// `ovn_nb_proxy_rewrites_total{cause="started"}`.
pub fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Proxy {
    /// The address of `--metrics=127.0.0.1:0`, read back from the log.
    pub fn metrics_addr(&mut self) -> String {
        let line = self.wait_log("metrics endpoint ready", Duration::from_secs(5));
        line.split("metrics=").nth(1).expect("address").trim().to_string()
    }

    /// Lines of the audit log target that mention `port=PORT `.
    pub fn audits(&self, port: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("ovn_nb_proxy::audit") && l.contains(&format!("port={port} ")))
            .map(str::to_string)
            .collect()
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One transaction on a raw connection (params without the database name); answers the
/// server's echo probes meanwhile; returns the reply.
pub fn transact_on(raw: &mut Raw, id: u64, ops: Vec<serde_json::Value>) -> serde_json::Value {
    let mut params = vec![serde_json::json!("OVN_Northbound")];
    params.extend(ops);
    let req = serde_json::json!({"id": id, "method": "transact", "params": params});
    raw.send(&serde_json::to_vec(&req).expect("json"));
    loop {
        let msg = raw.recv();
        if msg["method"] == "echo" {
            let reply = serde_json::json!({"id": msg["id"], "result": msg["params"], "error": null});
            raw.send(&serde_json::to_vec(&reply).expect("json"));
            continue;
        }
        if msg["id"] == serde_json::json!(id) {
            return msg;
        }
    }
}

/// `["map", [[k, v], ...]]`.
pub fn map_json(pairs: &[(String, String)]) -> serde_json::Value {
    serde_json::json!(["map", pairs.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>()])
}

/// `n` ports `PREFIX0`..`PREFIXn-1` on switch `sw` (created if absent), written directly to the
/// database at `socket` in transactions of 5000; `port(i)` gives each one's options and
/// external_ids.
pub fn bulk_ports(
    socket: &Path,
    sw: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    port: impl Fn(usize) -> (Vec<(String, String)>, Vec<(String, String)>),
) {
    use serde_json::json;
    let mut raw = Raw::connect(socket);
    raw.stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let reply = transact_on(
        &mut raw,
        1,
        vec![
            json!({"op": "select", "table": "Logical_Switch", "where": [["name", "==", sw]], "columns": ["_uuid"]}),
        ],
    );
    if reply["result"][0]["rows"].as_array().is_none_or(|r| r.is_empty()) {
        let r = transact_on(
            &mut raw,
            2,
            vec![json!({"op": "insert", "table": "Logical_Switch", "row": {"name": sw}})],
        );
        assert!(r["result"][0]["uuid"].is_array(), "create {sw}: {r}");
    }
    let ids: Vec<usize> = range.collect();
    for (b, chunk) in ids.chunks(5000).enumerate() {
        let mut ops = Vec::new();
        let mut refs = Vec::new();
        for &i in chunk {
            let (options, ext) = port(i);
            let named = format!("p{i}");
            ops.push(json!({"op": "insert", "table": "Logical_Switch_Port", "uuid-name": named,
                "row": {"name": format!("{prefix}{i}"), "options": map_json(&options), "external_ids": map_json(&ext)}}));
            refs.push(json!(["named-uuid", named]));
        }
        ops.push(json!({"op": "mutate", "table": "Logical_Switch", "where": [["name", "==", sw]],
            "mutations": [["ports", "insert", ["set", refs]]]}));
        let r = transact_on(&mut raw, 10 + b as u64, ops);
        let results = r["result"].as_array().unwrap_or_else(|| panic!("bulk insert: {r}"));
        assert!(
            results.iter().all(|x| x.get("error").is_none()),
            "bulk insert refused: {}",
            r.to_string().chars().take(500).collect::<String>()
        );
    }
}

/// Round trips of `echo` through a unix socket, every few ms, on a thread of its own; the
/// longest one is kept. Reconnects when the connection drops (the time without a connection
/// is not a round trip).
pub struct EchoProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    worst: Arc<Mutex<(Duration, u64)>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl EchoProbe {
    pub fn start(path: &Path) -> EchoProbe {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worst = Arc::new(Mutex::new((Duration::ZERO, 0u64)));
        let (s, w, path) = (stop.clone(), worst.clone(), path.to_path_buf());
        let handle = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(stream) = UnixStream::connect(&path) else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                let mut raw = Raw {
                    stream,
                    codec: ovn_nb_proxy::wire::FrameCodec::new(usize::MAX),
                    buf: bytes::BytesMut::new(),
                };
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let t0 = Instant::now();
                    if raw
                        .stream
                        .write_all(format!(r#"{{"method":"echo","params":[],"id":{n}}}"#).as_bytes())
                        .is_err()
                    {
                        break;
                    }
                    match raw.try_recv() {
                        Some(_) => {
                            let rtt = t0.elapsed();
                            let mut g = w.lock().expect("lock");
                            g.1 += 1;
                            if rtt > g.0 {
                                g.0 = rtt;
                            }
                        }
                        None => break,
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        EchoProbe { stop, worst, handle: Some(handle) }
    }

    /// The longest round trip so far, and how many were measured.
    pub fn worst(&self) -> (Duration, u64) {
        *self.worst.lock().expect("lock")
    }
}

impl Drop for EchoProbe {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Raw {
    /// A raw connection on an open stream.
    pub fn from_stream(stream: UnixStream) -> Raw {
        Raw { stream, codec: ovn_nb_proxy::wire::FrameCodec::new(usize::MAX), buf: bytes::BytesMut::new() }
    }

    /// Writes `bytes`; `None` if the connection is gone.
    pub fn try_send(&mut self, bytes: &[u8]) -> Option<()> {
        self.stream.write_all(bytes).ok()
    }

    /// The next whole message, or `None` at end of stream or on an error (timeout included).
    pub fn try_recv(&mut self) -> Option<Vec<u8>> {
        use tokio_util::codec::Decoder;
        loop {
            if let Ok(Some(chunk)) = self.codec.decode(&mut self.buf) {
                return Some(chunk.bytes().to_vec());
            }
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }
}

/// A string map column.
pub type StrMap = std::collections::BTreeMap<String, String>;
/// Port name → (options, external_ids).
pub type Ports = std::collections::HashMap<String, (StrMap, StrMap)>;

/// Every port's name → (options, external_ids), read directly from the database at `socket`.
pub fn read_ports(socket: &Path) -> Ports {
    let parse = |v: &serde_json::Value| -> StrMap {
        v[1].as_array()
            .map(|pairs| {
                pairs
                    .iter()
                    .map(|p| {
                        (p[0].as_str().unwrap_or("").to_string(), p[1].as_str().unwrap_or("").to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut raw = Raw::connect(socket);
    raw.stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let reply = transact_on(
        &mut raw,
        1,
        vec![serde_json::json!({"op": "select", "table": "Logical_Switch_Port", "where": [],
            "columns": ["name", "options", "external_ids"]})],
    );
    reply["result"][0]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("select: {reply}"))
        .iter()
        .map(|r| {
            (r["name"].as_str().unwrap_or("").to_string(), (parse(&r["options"]), parse(&r["external_ids"])))
        })
        .collect()
}

/// Every port's name → uuid, read directly from the database at `socket`.
pub fn port_uuids(socket: &Path) -> std::collections::HashMap<String, String> {
    let mut raw = Raw::connect(socket);
    raw.stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let reply = transact_on(
        &mut raw,
        1,
        vec![
            serde_json::json!({"op": "select", "table": "Logical_Switch_Port", "where": [], "columns": ["name", "_uuid"]}),
        ],
    );
    reply["result"][0]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("select: {reply}"))
        .iter()
        .map(|r| {
            (r["name"].as_str().unwrap_or("").to_string(), r["_uuid"][1].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// The (options, external_ids) of the ports with these uuids, read directly in one transaction
/// (one indexed select per row: cheap on a big table, unlike a scan).
pub fn read_rows(socket: &Path, uuids: &[&str]) -> Vec<Option<(StrMap, StrMap)>> {
    let parse = |v: &serde_json::Value| -> StrMap {
        v[1].as_array()
            .map(|pairs| {
                pairs
                    .iter()
                    .map(|p| {
                        (p[0].as_str().unwrap_or("").to_string(), p[1].as_str().unwrap_or("").to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut raw = Raw::connect(socket);
    raw.stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let ops = uuids
        .iter()
        .map(|u| {
            serde_json::json!({"op": "select", "table": "Logical_Switch_Port", "where": [["_uuid", "==", ["uuid", u]]],
                "columns": ["options", "external_ids"]})
        })
        .collect();
    let reply = transact_on(&mut raw, 1, ops);
    let results = reply["result"].as_array().cloned().unwrap_or_default();
    results
        .iter()
        .map(|r| r["rows"].get(0).map(|row| (parse(&row["options"]), parse(&row["external_ids"]))))
        .collect()
}

/// Polls `cond` until it holds, for at most `within`.
pub fn eventually_within(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not true within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Owned pairs, for `bulk_ports`.
pub fn pairs(kv: &[(&str, &str)]) -> Vec<(String, String)> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// One transaction on a new connection to `socket`: the reply, or `None` when the connection
/// could not be made or closed before the reply (the caller may try again).
pub fn try_transact(socket: &Path, ops: Vec<serde_json::Value>) -> Option<serde_json::Value> {
    let stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut raw =
        Raw { stream, codec: ovn_nb_proxy::wire::FrameCodec::new(usize::MAX), buf: bytes::BytesMut::new() };
    let mut params = vec![serde_json::json!("OVN_Northbound")];
    params.extend(ops);
    let req = serde_json::json!({"id": 1, "method": "transact", "params": params});
    raw.stream.write_all(&serde_json::to_vec(&req).ok()?).ok()?;
    loop {
        let msg: serde_json::Value = serde_json::from_slice(&raw.try_recv()?).ok()?;
        if msg["method"] == "echo" {
            let reply = serde_json::json!({"id": msg["id"], "result": msg["params"], "error": null});
            raw.stream.write_all(&serde_json::to_vec(&reply).ok()?).ok()?;
        } else if msg["id"] == 1 {
            return Some(msg);
        }
    }
}
