//! Throw-away OVN processes for the demo and the tests: an NB `ovsdb-server` in a directory of
//! its own (no default paths touched), stopped when dropped, and helpers that run OVN tools
//! with clear errors when they are missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where Debian's `ovn-common` installs the NB schema; `OVN_NB_SCHEMA` overrides it.
pub const DEFAULT_NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";

/// Polls `cond` until it holds (5 s at most), for the tests: no sleeps standing in for
/// synchronisation. Panics, naming `what`, if it does not.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "not true within 5 s: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Fails with a message that says which package brings `tool`, if it is not on PATH.
pub fn require(tool: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]) {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let package = match tool {
        "ovn-nbctl" | "ovn-sbctl" => "ovn-common (with ovn-central)",
        "ovn-northd" => "ovn-central",
        "ovn-controller" => "ovn-host",
        "ovs-vswitchd" | "ovs-vsctl" => "openvswitch-switch",
        "ovs-pki" => "openvswitch-pki",
        "socat" => "socat",
        "ip" | "bridge" => "iproute2",
        "ethtool" => "ethtool",
        "python3" => "python3",
        "qemu-system-x86_64" => "qemu-system-x86",
        "busybox" => "busybox-static",
        _ => "openvswitch-common",
    };
    bail!("{tool} not found on PATH: install the Debian package {package} (tools/setup.sh installs everything the project needs)")
}

pub fn nb_schema() -> Result<PathBuf> {
    let p = std::env::var_os("OVN_NB_SCHEMA").map(PathBuf::from).unwrap_or_else(|| DEFAULT_NB_SCHEMA.into());
    if !p.is_file() {
        bail!(
            "OVN NB schema not found at {}: install the Debian package ovn-common, or set OVN_NB_SCHEMA",
            p.display()
        );
    }
    Ok(p)
}

/// Points every OVS/OVN default directory of `cmd` at `dir` (the testsuite's `ovs_setenv`):
/// nothing touches /var/run/openvswitch or /etc.
pub fn sandbox_env<'a>(cmd: &'a mut Command, dir: &Path) -> &'a mut Command {
    for key in [
        "OVS_RUNDIR",
        "OVS_LOGDIR",
        "OVS_DBDIR",
        "OVS_SYSCONFDIR",
        "OVN_RUNDIR",
        "OVN_LOGDIR",
        "OVN_DBDIR",
        "OVN_SYSCONFDIR",
    ] {
        cmd.env(key, dir);
    }
    cmd
}

/// Runs an OVS/OVN tool to completion; its stdout on success, its stderr in the error.
pub fn run_tool(tool: &str, args: &[&str]) -> Result<String> {
    run_tool_in(None, tool, args)
}

/// [`run_tool`], with the tool's default directories in `dir` (see [`sandbox_env`]).
pub fn run_tool_in(dir: Option<&Path>, tool: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(require(tool)?);
    if let Some(dir) = dir {
        sandbox_env(&mut cmd, dir);
    }
    let out = cmd.args(args).stdin(Stdio::null()).output().with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ovn-nbctl --db=DB ARGS…` with a timeout, so a broken proxy fails a test instead of hanging it.
pub fn ovn_nbctl(db: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["--timeout=20".to_string(), format!("--db={db}")];
    full.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    run_tool("ovn-nbctl", &refs)
}

/// A standalone NB `ovsdb-server` on `punix:DIR/nb.sock` and `ptcp:0:127.0.0.1`.
pub struct NbServer {
    child: Child,
    dir: PathBuf,
    tcp_port: u16,
    /// The TCP listener: `--remote=ptcp:0:127.0.0.1`, or a `pssl:` one with its files.
    tcp_args: Vec<String>,
}

impl NbServer {
    /// Creates `DIR/nb.db` from the installed schema and starts the server; waits until both
    /// listeners are up (60 s at most).
    pub fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, vec!["--remote=ptcp:0:127.0.0.1".into()])
    }

    /// The same, with its TCP listener on SSL (`pssl:0:127.0.0.1`) instead, using `pair`
    /// and requiring client certificates signed by `ca`.
    pub fn start_ssl(dir: &Path, pair: &CertPair, ca: &Path) -> Result<Self> {
        Self::start_with(
            dir,
            vec![
                "--remote=pssl:0:127.0.0.1".into(),
                format!("--private-key={}", pair.key.display()),
                format!("--certificate={}", pair.cert.display()),
                format!("--ca-cert={}", ca.display()),
            ],
        )
    }

    fn start_with(dir: &Path, tcp_args: Vec<String>) -> Result<Self> {
        let schema = nb_schema()?;
        let db = dir.join("nb.db");
        run_tool("ovsdb-tool", &["create", &db.to_string_lossy(), &schema.to_string_lossy()])?;
        let child = Self::launch(dir, &tcp_args)?;
        let mut server = NbServer { child, dir: dir.to_path_buf(), tcp_port: 0, tcp_args };
        server.tcp_port = server.wait_up()?;
        Ok(server)
    }

    /// Kills the server and starts it again on the same database file and unix socket (the
    /// TCP port changes): what a crash and a restart look like to its clients.
    pub fn restart(&mut self) -> Result<()> {
        self.restart_with(|_| Ok(()))
    }

    /// Kills the server (SIGKILL), runs `while_down` with the database file (to change it with
    /// `ovsdb-tool`, or to let time pass), then starts the server again on that file.
    pub fn restart_with(&mut self, while_down: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while_down(&self.dir.join("nb.db"))?;
        self.child = Self::launch(&self.dir, &self.tcp_args)?;
        self.tcp_port = self.wait_up()?;
        Ok(())
    }

    fn launch(dir: &Path, tcp_args: &[String]) -> Result<Child> {
        spawn_server(dir, tcp_args)
    }

    /// Waits (60 s at most: a big database with a long log takes a while to read back) until
    /// both listeners are up; returns the TCP port.
    fn wait_up(&mut self) -> Result<u16> {
        let log = self.dir.join("ovsdb-server.log");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "ovsdb-server exited at start ({status}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(port) = parse_listening_port(&text) {
                if self.socket().exists() {
                    return Ok(port);
                }
            }
            if Instant::now() > deadline {
                bail!("ovsdb-server did not come up within 60 s; log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("nb.sock")
    }

    /// `unix:DIR/nb.sock`, for `--db` and `--upstream`.
    pub fn unix_remote(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    pub fn tcp_remote(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.tcp_port)
    }

    /// For a server started with `start_ssl`.
    pub fn ssl_remote(&self) -> String {
        format!("ssl:127.0.0.1:{}", self.tcp_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ovsdb-server.log")).unwrap_or_default()
    }
}

impl Drop for NbServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ovsdb-server` on `dir/nb.db` with `punix:dir/nb.sock`, the TCP listener arguments
/// given, its control socket and a fresh log in `dir`, and its default directories there too.
fn spawn_server(dir: &Path, tcp_args: &[String]) -> Result<Child> {
    let log = dir.join("ovsdb-server.log");
    // A fresh log, so the listening port read back is this run's.
    let _ = std::fs::remove_file(&log);
    sandbox_env(&mut Command::new(require("ovsdb-server")?), dir)
        .arg(format!("--remote=punix:{}", dir.join("nb.sock").display()))
        .args(tcp_args)
        .arg(format!("--unixctl={}", dir.join("ovsdb-server.ctl").display()))
        .arg(format!("--log-file={}", log.display()))
        .args(["-vconsole:off", "-vfile:info", "--no-chdir"])
        .arg(dir.join("nb.db"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ovsdb-server")
}

/// The port from ovsdb-server's `ptcp:0:127.0.0.1: listening on port N` log line (the same
/// trick as the OVS testsuite's PARSE_LISTENING_PORT).
pub fn parse_listening_port(log: &str) -> Option<u16> {
    log.lines().find_map(|l| l.split("listening on port ").nth(1)).and_then(|p| p.trim().parse().ok())
}

/// A 3-member (or N) Raft NB cluster on loopback: raft over unix sockets (no ports to pick in
/// advance), clients on `punix:` and `ptcp:0`. Members are stopped on drop.
pub struct NbCluster {
    dir: PathBuf,
    members: Vec<Option<Child>>,
    ports: Vec<u16>,
}

impl NbCluster {
    pub fn start(dir: &Path, n: usize) -> Result<Self> {
        let schema = nb_schema()?;
        let member = |i: usize| dir.join(format!("s{i}"));
        for i in 0..n {
            std::fs::create_dir_all(member(i))?;
            let db = member(i).join("nb.db");
            let raft = format!("unix:{}", member(i).join("raft.sock").display());
            if i == 0 {
                run_tool(
                    "ovsdb-tool",
                    &["create-cluster", &db.to_string_lossy(), &schema.to_string_lossy(), &raft],
                )?;
            } else {
                let first = format!("unix:{}", member(0).join("raft.sock").display());
                run_tool(
                    "ovsdb-tool",
                    &["join-cluster", &db.to_string_lossy(), "OVN_Northbound", &raft, &first],
                )?;
            }
        }
        let mut cluster = NbCluster { dir: dir.to_path_buf(), members: Vec::new(), ports: vec![0; n] };
        for i in 0..n {
            cluster.members.push(Some(cluster.launch(i)?));
        }
        for i in 0..n {
            cluster.ports[i] = cluster.wait_up(i)?;
        }
        for i in 0..n {
            run_tool(
                "ovsdb-client",
                &["--timeout=30", "wait", &cluster.unix_remote(i), "OVN_Northbound", "connected"],
            )?;
        }
        Ok(cluster)
    }

    fn member(&self, i: usize) -> PathBuf {
        self.dir.join(format!("s{i}"))
    }

    fn launch(&self, i: usize) -> Result<Child> {
        spawn_server(&self.member(i), &["--remote=ptcp:0:127.0.0.1".to_string()])
    }

    fn wait_up(&self, i: usize) -> Result<u16> {
        let log = self.member(i).join("ovsdb-server.log");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(port) = parse_listening_port(&text) {
                return Ok(port);
            }
            if Instant::now() > deadline {
                bail!("cluster member {i} did not come up within 60 s; log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    pub fn unix_remote(&self, i: usize) -> String {
        format!("unix:{}", self.socket(i).display())
    }

    /// Member `i`'s unix socket.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.member(i).join("nb.sock")
    }

    /// Whether member `i` runs (it may have been killed).
    pub fn is_running(&self, i: usize) -> bool {
        self.members.get(i).is_some_and(Option::is_some)
    }

    /// Starts member `i` again (after `kill`) on its database file; it rejoins the cluster.
    /// Its TCP port changes; its unix socket stays.
    pub fn restart_member(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.members[i] = Some(self.launch(i)?);
        self.ports[i] = self.wait_up(i)?;
        Ok(())
    }

    pub fn tcp_remote(&self, i: usize) -> String {
        format!("tcp:127.0.0.1:{}", self.ports[i])
    }

    /// Whether member `i` says it is the leader (false when it does not answer).
    pub fn is_leader(&self, i: usize) -> bool {
        let q = r#"["_Server",{"op":"select","table":"Database","where":[["name","==","OVN_Northbound"]],"columns":["leader"]}]"#;
        run_tool("ovsdb-client", &["--timeout=2", "query", &self.unix_remote(i), q])
            .is_ok_and(|out| out.contains("\"leader\":true"))
    }

    /// The member that says it leads, waiting up to 10 s for an election.
    pub fn leader(&self) -> Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = (0..self.len()).find(|&i| self.members[i].is_some() && self.is_leader(i)) {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no cluster leader within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NbCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Certificates made by the real `ovs-pki`, in a directory of their own.
pub struct Pki {
    dir: PathBuf,
}

/// A private key and its certificate.
pub struct CertPair {
    pub key: PathBuf,
    pub cert: PathBuf,
}

impl Pki {
    /// `ovs-pki init` in `dir/pki`.
    pub fn init(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let pki = Pki { dir: dir.to_path_buf() };
        pki.run(&["init"])?;
        Ok(pki)
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(require("ovs-pki")?)
            .arg(format!("--dir={}", self.dir.join("pki").display()))
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .context("running ovs-pki")?;
        if !out.status.success() {
            bail!("ovs-pki {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The CA certificate clients and servers check against (`ovs-pki`'s switch CA).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("pki/switchca/cacert.pem")
    }

    /// A new key and certificate signed by this CA (`ovs-pki req+sign NAME switch`).
    pub fn issue(&self, name: &str) -> Result<CertPair> {
        self.run(&["req+sign", name, "switch"])?;
        Ok(CertPair {
            key: self.dir.join(format!("{name}-privkey.pem")),
            cert: self.dir.join(format!("{name}-cert.pem")),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn listening_port_from_log() {
        let log = "2026-11-25T21:00:00.000Z|00002|socket_util|INFO|0:127.0.0.1: listening on port 41873\n";
        assert_eq!(super::parse_listening_port(log), Some(41873));
        assert_eq!(super::parse_listening_port("nothing"), None);
    }
}
