//! The lab's processes: daemons run as our children (stopped in order, reaped), the control
//! tools run against a sandbox directory, and polling with a deadline.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::sandbox;

/// How long a daemon gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Passed to every control tool, so a stuck daemon fails a call instead of hanging it.
const TOOL_TIMEOUT: &str = "--timeout=20";

pub(super) fn need_file(path: &str, package: &str) -> Result<()> {
    if !Path::new(path).is_file() {
        bail!("{path} not found: install the Debian package {package}");
    }
    Ok(())
}

/// Runs `tool ARGS…` with `dir` as its sandbox; its stdout on success, its stderr in the error.
pub(super) fn run_in(dir: &Path, tool: &str, args: &[&str]) -> Result<String> {
    sandbox::run_tool_in(Some(dir), tool, args)
}

/// [`run_in`] for control tools, with [`TOOL_TIMEOUT`] in front.
pub(crate) fn ctl(dir: &Path, tool: &str, args: &[&str]) -> Result<String> {
    let mut full = vec![TOOL_TIMEOUT];
    full.extend_from_slice(args);
    run_in(dir, tool, &full)
}

pub(crate) fn control_socket(dir: &Path, prog: &str) -> PathBuf {
    dir.join(format!("{prog}.ctl"))
}

/// `ovs-appctl` to the `ovs-vswitchd` whose sandbox is `dir`.
pub(crate) fn vswitchd_appctl(dir: &Path, args: &[&str]) -> Result<String> {
    let target = control_socket(dir, "ovs-vswitchd");
    let target = target.to_string_lossy();
    let mut full = vec!["-t", &target];
    full.extend_from_slice(args);
    ctl(dir, "ovs-appctl", &full)
}

fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One daemon, run in the foreground as our child. It is never reaped before it is signalled,
/// so its pid cannot have been reused by then.
pub(super) struct Daemon {
    label: String,
    dir: PathBuf,
    prog: String,
    pub(super) child: Child,
    /// Database servers stop after everything else.
    pub(super) database: bool,
}

impl Daemon {
    /// Starts `prog` with its log, pidfile and control socket in `dir`, inside network
    /// namespace `netns` when given (`ip netns exec` execs it: the child is the daemon).
    pub(super) fn spawn(
        dir: &Path,
        netns: Option<&str>,
        prog: &str,
        args: &[String],
        database: bool,
    ) -> Result<Daemon> {
        let stderr = File::create(dir.join(format!("{prog}.stderr")))?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new(sandbox::require("ip")?);
                c.args(["netns", "exec", ns]).arg(sandbox::require(prog)?);
                c
            }
            None => Command::new(sandbox::require(prog)?),
        };
        // ovn-controller has no --unixctl: its socket is OVN_RUNDIR/ovn-controller.PID.ctl.
        if prog != "ovn-controller" {
            cmd.arg(format!("--unixctl={}", control_socket(dir, prog).display()));
        }
        let child = sandbox::sandbox_env(&mut cmd, dir)
            .arg(format!("--log-file={}", dir.join(format!("{prog}.log")).display()))
            .arg(format!("--pidfile={}", dir.join(format!("{prog}.pid")).display()))
            .args(["-vconsole:off", "--no-chdir"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {prog}"))?;
        let label = format!("{}/{prog}", dir.file_name().unwrap_or_default().to_string_lossy());
        Ok(Daemon { label, dir: dir.to_path_buf(), prog: prog.to_string(), child, database })
    }

    /// An error with the end of its log if it has exited.
    pub(super) fn check(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); stderr:\n{}\nlog:\n{}",
                self.label,
                last_lines(&self.dir.join(format!("{}.stderr", self.prog)), 10),
                last_lines(&self.dir.join(format!("{}.log", self.prog)), 20)
            );
        }
        Ok(())
    }
}

/// SIGTERM to every daemon still running, then SIGKILL to those left after [`STOP_GRACE`];
/// reaps them all.
pub(super) fn terminate(group: &mut [Daemon]) {
    let pids: Vec<String> = group
        .iter_mut()
        .filter_map(|d| matches!(d.child.try_wait(), Ok(None)).then(|| d.child.id().to_string()))
        .collect();
    // std has no SIGTERM; kill(1) is procps. Without it, SIGKILL below does the job at once.
    let termed = !pids.is_empty()
        && Command::new("kill")
            .arg("-TERM")
            .args(&pids)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let deadline = Instant::now() + if termed { STOP_GRACE } else { Duration::ZERO };
    for d in group.iter_mut() {
        while matches!(d.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = d.child.kill();
        let _ = d.child.wait();
    }
}

/// Polls `probe` every 10 ms until it yields a value; `alive` is checked on each round so a
/// dead daemon fails fast with its log.
pub(super) fn poll<T>(
    what: &str,
    within: Duration,
    mut alive: impl FnMut() -> Result<()>,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        alive().with_context(|| format!("while waiting for {what}"))?;
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a unix socket accepts connections (its file appears at bind(), before listen()).
pub(crate) fn accepts(sock: &Path) -> bool {
    UnixStream::connect(sock).is_ok()
}

pub(crate) fn mkdir(parent: &Path, name: &str) -> Result<PathBuf> {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub(crate) fn vsctl(dir: &Path, args: &[&str]) -> Result<String> {
    let db = format!("--db=unix:{}", dir.join("db.sock").display());
    let mut full = vec![db.as_str()];
    full.extend_from_slice(args);
    ctl(dir, "ovs-vsctl", &full)
}
