//! Throw-away OVN processes for the demo and the tests: an NB `ovsdb-server` in a directory of
//! its own (no default paths touched), stopped when dropped, and helpers that run OVN tools
//! with clear errors when they are missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where Debian's `ovn-common` installs the NB schema; `OVN_NB_SCHEMA` overrides it.
pub const DEFAULT_NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";

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

/// Runs an OVS/OVN tool to completion; its stdout on success, its stderr in the error.
pub fn run_tool(tool: &str, args: &[&str]) -> Result<String> {
    let exe = require(tool)?;
    let out = Command::new(&exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {tool}"))?;
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
}

impl NbServer {
    /// Creates `DIR/nb.db` from the installed schema and starts the server; waits until both
    /// listeners are up (10 s at most).
    pub fn start(dir: &Path) -> Result<Self> {
        let schema = nb_schema()?;
        let db = dir.join("nb.db");
        run_tool("ovsdb-tool", &["create", &db.to_string_lossy(), &schema.to_string_lossy()])?;
        let child = Self::launch(dir)?;
        let mut server = NbServer { child, dir: dir.to_path_buf(), tcp_port: 0 };
        server.tcp_port = server.wait_up()?;
        Ok(server)
    }

    /// Kills the server and starts it again on the same database file and unix socket (the
    /// TCP port changes): what a crash and a restart look like to its clients.
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::launch(&self.dir)?;
        self.tcp_port = self.wait_up()?;
        Ok(())
    }

    fn launch(dir: &Path) -> Result<Child> {
        let server = require("ovsdb-server")?;
        let log = dir.join("ovsdb-server.log");
        // A fresh log, so the listening port read back is this run's.
        let _ = std::fs::remove_file(&log);
        Command::new(server)
            .arg(format!("--remote=punix:{}", dir.join("nb.sock").display()))
            .arg("--remote=ptcp:0:127.0.0.1")
            .arg(format!("--unixctl={}", dir.join("ovsdb-server.ctl").display()))
            .arg(format!("--log-file={}", log.display()))
            .args(["-vconsole:off", "-vfile:info", "--no-chdir"])
            .arg(dir.join("nb.db"))
            .envs(["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"].map(|k| (k, dir)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ovsdb-server")
    }

    /// Waits (10 s at most) until both listeners are up; returns the TCP port.
    fn wait_up(&mut self) -> Result<u16> {
        let log = self.dir.join("ovsdb-server.log");
        let deadline = Instant::now() + Duration::from_secs(10);
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
                bail!("ovsdb-server did not come up within 10 s; log:\n{text}");
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

/// The port from ovsdb-server's `ptcp:0:127.0.0.1: listening on port N` log line (the same
/// trick as the OVS testsuite's PARSE_LISTENING_PORT).
pub fn parse_listening_port(log: &str) -> Option<u16> {
    log.lines().find_map(|l| l.split("listening on port ").nth(1)).and_then(|p| p.trim().parse().ok())
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
