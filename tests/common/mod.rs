//! Test harness: a real NB `ovsdb-server` and the real proxy binary, each in a temp dir, each
//! stopped on drop. No fixed ports: ovsdb-server and the proxy listen on `ptcp:0`, and the
//! ports are read back from their logs. Missing OVN tools fail the test with the package name.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use ovn_nb_proxy::sandbox::{ovn_nbctl, run_tool, NbServer};

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
    pub dir: tempfile::TempDir,
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
        let mut proxy = Proxy { child, dir, unix, ctl, tcp_port: 0, log };
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
        let exe = ovn_nb_proxy::sandbox::require("ovs-appctl").unwrap_or_else(|e| panic!("{e:#}"));
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

/// Polls `cond` until it holds (5 s at most): no sleeps standing in for synchronisation.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "not true within 5 s: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
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
        let exe = ovn_nb_proxy::sandbox::require(tool).unwrap_or_else(|e| panic!("{e:#}"));
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
