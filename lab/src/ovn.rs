//! A throw-away OVN deployment on one machine, for the end-to-end tests and the demo.
//!
//! [`OvnLab::start`] runs NB and SB `ovsdb-server`, `ovn-northd`, and simulated hypervisors: each
//! one an `ovsdb-server`, an `ovs-vswitchd` on the dummy (userspace) datapath and an
//! `ovn-controller`. The hypervisors' `br-phys` bridges are joined through a "main" vswitchd
//! over unix stream sockets, and Geneve tunnels run between them on 192.168.0.x addresses that
//! exist only inside OVS. Everything lives under one directory: no default paths, unix sockets
//! plus one `ptcp:0:127.0.0.1` listener on SB, no fixed ports. Dropping the lab stops every
//! daemon it started. The recipe and its traps are in the project's lab notes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::sandbox::{self, NbServer};

/// Where Debian's `ovn-central` installs the SB schema.
pub const SB_SCHEMA: &str = "/usr/share/ovn/ovn-sb.ovsschema";
/// Where Debian's `openvswitch-switch` installs the Open_vSwitch schema.
pub const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// How long start-up steps (a daemon's socket, chassis registration) may take.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Passed to every control tool, so a stuck daemon fails a call instead of hanging it.
const TOOL_TIMEOUT: &str = "--timeout=20";

/// The SB columns [`PortBinding`] is built from.
const PB_COLUMNS: [&str; 8] = [
    "logical_port",
    "tunnel_key",
    "chassis",
    "additional_chassis",
    "requested_chassis",
    "requested_additional_chassis",
    "options",
    "up",
];

// ---------------------------------------------------------------------------------------------
// processes

fn need_file(path: &str, package: &str) -> Result<()> {
    if !Path::new(path).is_file() {
        bail!("{path} not found: install the Debian package {package}");
    }
    Ok(())
}

/// Runs `tool ARGS…` with `dir` as its sandbox; its stdout on success, its stderr in the error.
fn run_in(dir: &Path, tool: &str, args: &[&str]) -> Result<String> {
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
struct Daemon {
    label: String,
    dir: PathBuf,
    prog: String,
    child: Child,
    /// Database servers stop after everything else.
    database: bool,
}

impl Daemon {
    /// Starts `prog` with its log, pidfile and control socket in `dir`, inside network
    /// namespace `netns` when given (`ip netns exec` execs it: the child is the daemon).
    fn spawn(dir: &Path, netns: Option<&str>, prog: &str, args: &[String], database: bool) -> Result<Daemon> {
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
    fn check(&mut self) -> Result<()> {
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
fn terminate(group: &mut [Daemon]) {
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
fn poll<T>(
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

// ---------------------------------------------------------------------------------------------
// the lab

/// NB + SB + northd + simulated hypervisors, all stopped on drop.
pub struct OvnLab {
    dir: PathBuf,
    daemons: Mutex<Vec<Daemon>>,
    hvs: Vec<Hypervisor>,
    sb_tcp_port: u16,
    /// Dropped (killed) after `Drop::drop` has stopped everything else.
    nb: NbServer,
}

impl OvnLab {
    /// Starts a lab in `dir` (which must exist and outlive the lab) with one chassis per name in
    /// `hypervisors` (name = system-id = hostname), and waits until every chassis is registered
    /// in SB and has caught up with NB.
    pub fn start(dir: &Path, hypervisors: &[&str]) -> Result<OvnLab> {
        if hypervisors.is_empty() || hypervisors.len() > 200 {
            bail!("a lab has 1 to 200 hypervisors, not {}", hypervisors.len());
        }
        need_file(VSWITCH_SCHEMA, "openvswitch-switch")?;
        for tool in ["ovn-northd", "ovn-controller", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ovsdb-client"]
        {
            sandbox::require(tool)?;
        }
        let mut lab = OvnLab::start_central(dir)?;
        lab.start_network(hypervisors)?;
        lab.hvs = std::thread::scope(|s| {
            let lab = &lab;
            let handles: Vec<_> = hypervisors
                .iter()
                .enumerate()
                .map(|(i, name)| s.spawn(move || lab.start_hv(name, Ipv4Addr::new(192, 168, 0, i as u8 + 1))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow!("hypervisor start panicked"))?)
                .collect::<Result<Vec<Hypervisor>>>()
        })?;
        lab.wait_chassis()?;
        lab.populate_tunnel_arp()?;
        lab.sync_hv()?;
        Ok(lab)
    }

    /// `unix:…` of the NB database.
    pub fn nb_remote(&self) -> String {
        self.nb.unix_remote()
    }

    /// `tcp:127.0.0.1:PORT` of the NB database.
    pub fn nb_tcp_remote(&self) -> String {
        self.nb.tcp_remote()
    }

    /// `unix:…` of the SB database (the one northd and the controllers use).
    pub fn sb_remote(&self) -> String {
        format!("unix:{}", self.sb_socket().display())
    }

    /// `tcp:127.0.0.1:PORT` of the SB database.
    pub fn sb_tcp_remote(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.sb_tcp_port)
    }

    fn sb_socket(&self) -> PathBuf {
        self.dir.join("sb").join("sb.sock")
    }

    /// `ovn-nbctl` straight to NB (not through any proxy).
    pub fn nbctl(&self, args: &[&str]) -> Result<String> {
        sandbox::ovn_nbctl(&self.nb_remote(), args)
    }

    /// `ovn-sbctl` against SB.
    pub fn sbctl(&self, args: &[&str]) -> Result<String> {
        let db = format!("--db={}", self.sb_remote());
        let mut full = vec![db.as_str()];
        full.extend_from_slice(args);
        ctl(&self.dir, "ovn-sbctl", &full)
    }

    /// `ovn-nbctl --wait=hv sync`: returns once northd and every ovn-controller have caught up
    /// with NB (flows for what is in SB now are installed).
    pub fn sync_hv(&self) -> Result<()> {
        self.nbctl(&["--wait=hv", "sync"]).map(drop)
    }

    /// The hypervisors, in the order given to [`OvnLab::start`].
    pub fn hypervisors(&self) -> &[Hypervisor] {
        &self.hvs
    }

    /// The hypervisor called `name`.
    pub fn hv(&self, name: &str) -> Result<&Hypervisor> {
        self.hvs.iter().find(|h| h.name == name).ok_or_else(|| anyhow!("no hypervisor {name} in the lab"))
    }

    /// The lab's directory (logs of every daemon are in its subdirectories).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pids of every process the lab runs.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.lock().iter().map(|d| d.child.id()).collect();
        pids.push(self.nb.pid());
        pids
    }

    /// SB `Port_Binding` of `lsp`, chassis uuids resolved to chassis names.
    pub fn port_binding(&self, lsp: &str) -> Result<PortBinding> {
        let txn = json!(["OVN_Southbound",
            {"op": "select", "table": "Port_Binding", "where": [["logical_port", "==", lsp]], "columns": PB_COLUMNS},
            {"op": "select", "table": "Chassis", "where": [], "columns": ["_uuid", "name"]}]);
        let out = ctl(&self.dir, "ovsdb-client", &["query", &self.sb_remote(), &txn.to_string()])?;
        let reply: Value = serde_json::from_str(&out).context("ovsdb-client query output")?;
        let names = chassis_names(reply[1]["rows"].as_array().map(Vec::as_slice).unwrap_or_default());
        let row = reply[0]["rows"].get(0).ok_or_else(|| anyhow!("no SB Port_Binding for {lsp}"))?;
        Ok(PortBinding::from_row(row, &names))
    }

    /// A live monitor of SB `Port_Binding`, for timing changes.
    pub fn watch_sb(&self) -> Result<SbWatch> {
        SbWatch::start(&self.sb_socket())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Daemon>> {
        self.daemons.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self, dir: &Path, prog: &str, args: &[String], database: bool) -> Result<()> {
        self.spawn_in(dir, None, prog, args, database)
    }

    /// [`OvnLab::spawn`] inside a network namespace; stopped with the lab.
    pub(crate) fn spawn_in(
        &self,
        dir: &Path,
        netns: Option<&str>,
        prog: &str,
        args: &[String],
        database: bool,
    ) -> Result<()> {
        let daemon = Daemon::spawn(dir, netns, prog, args, database)?;
        self.lock().push(daemon);
        Ok(())
    }

    /// NB, SB and `ovn-northd` only: the chassis are the caller's (the real-packet lab runs
    /// them in network namespaces).
    pub fn start_central(dir: &Path) -> Result<OvnLab> {
        need_file(SB_SCHEMA, "ovn-central")?;
        let nb = NbServer::start(&mkdir(dir, "nb")?).context("starting the NB ovsdb-server")?;
        let mut lab = OvnLab {
            dir: dir.to_path_buf(),
            daemons: Mutex::new(Vec::new()),
            hvs: Vec::new(),
            sb_tcp_port: 0,
            nb,
        };
        lab.sb_tcp_port =
            lab.start_ovsdb(&mkdir(dir, "sb")?, "sb", "sb.sock", SB_SCHEMA, true)?.unwrap_or_default();
        lab.nbctl(&["init"])?;
        lab.sbctl(&["init"])?;
        lab.start_northd()?;
        Ok(lab)
    }

    /// Creates `DIR/conf.db` and serves it on `punix:DIR/db.sock` from inside `netns`.
    pub(crate) fn start_conf_db(&self, dir: &Path, netns: &str) -> Result<()> {
        let db = dir.join("conf.db");
        let sock = dir.join("db.sock");
        run_in(dir, "ovsdb-tool", &["create", &db.to_string_lossy(), VSWITCH_SCHEMA])?;
        let args = [format!("--remote=punix:{}", sock.display()), db.to_string_lossy().into_owned()];
        self.spawn_in(dir, Some(netns), "ovsdb-server", &args, true)?;
        self.wait_for(&format!("{} listening", sock.display()), || accepts(&sock).then_some(()))
    }

    /// Waits (20 s at most, failing fast if a daemon died) until `probe` yields.
    pub(crate) fn wait_until<T>(&self, what: &str, probe: impl FnMut() -> Option<T>) -> Result<T> {
        self.wait_for(what, probe)
    }

    /// An error naming the first daemon that has exited.
    fn check_alive(&self) -> Result<()> {
        self.lock().iter_mut().try_for_each(Daemon::check)
    }

    fn wait_for<T>(&self, what: &str, probe: impl FnMut() -> Option<T>) -> Result<T> {
        poll(what, START_TIMEOUT, || self.check_alive(), probe)
    }

    /// Creates `DIR/NAME.db` from `schema` and serves it on `punix:DIR/SOCK` (plus
    /// `ptcp:0:127.0.0.1` if `tcp`, whose port is returned).
    fn start_ovsdb(
        &self,
        dir: &Path,
        name: &str,
        sock: &str,
        schema: &str,
        tcp: bool,
    ) -> Result<Option<u16>> {
        let db = dir.join(format!("{name}.db"));
        let sock = dir.join(sock);
        run_in(dir, "ovsdb-tool", &["create", &db.to_string_lossy(), schema])?;
        let mut args = vec![format!("--remote=punix:{}", sock.display())];
        if tcp {
            args.push("--remote=ptcp:0:127.0.0.1".into());
        }
        args.push(db.to_string_lossy().into_owned());
        self.spawn(dir, "ovsdb-server", &args, true)?;
        let log = dir.join("ovsdb-server.log");
        self.wait_for(&format!("{} listening", sock.display()), || {
            let port = sandbox::parse_listening_port(&std::fs::read_to_string(&log).unwrap_or_default());
            (accepts(&sock) && (port.is_some() || !tcp)).then_some(port)
        })
    }

    fn start_northd(&self) -> Result<()> {
        let dir = mkdir(&self.dir, "northd")?;
        let args = [format!("--ovnnb-db={}", self.nb_remote()), format!("--ovnsb-db={}", self.sb_remote())];
        self.spawn(&dir, "ovn-northd", &args, false)?;
        self.nbctl(&["--wait=sb", "sync"]).context("ovn-northd is not processing NB")?;
        Ok(())
    }

    /// An `ovsdb-server` + `ovs-vswitchd --enable-dummy=system` in `dir`.
    fn start_vswitch(&self, dir: &Path) -> Result<()> {
        self.start_ovsdb(dir, "conf", "db.sock", VSWITCH_SCHEMA, false)?;
        let db = format!("unix:{}", dir.join("db.sock").display());
        ctl(dir, "ovs-vsctl", &[&format!("--db={db}"), "--no-wait", "init"])?;
        // =system, not =override: override also makes geneve ports dummy, and tunnels then
        // silently carry nothing.
        let args = ["--enable-dummy=system".to_string(), "--disable-system-route".into(), db];
        self.spawn(dir, "ovs-vswitchd", &args, false)?;
        let sock = control_socket(dir, "ovs-vswitchd");
        self.wait_for("ovs-vswitchd control socket", || accepts(&sock).then_some(()))
    }

    /// The "main" switch: bridge `n1` with one listening stream port per hypervisor.
    fn start_network(&self, hypervisors: &[&str]) -> Result<()> {
        let main = mkdir(&self.dir, "main")?;
        self.start_vswitch(&main)?;
        let mut args: Vec<String> = vec!["add-br".into(), "n1".into()];
        for hv in hypervisors {
            let port = format!("{hv}_br-phys");
            let pstream = format!("options:pstream=punix:{}", main.join(format!("{port}.sock")).display());
            args.extend(
                ["--", "add-port", "n1", &port, "--", "set", "Interface", &port, &pstream].map(String::from),
            );
        }
        vsctl(&main, &args.iter().map(String::as_str).collect::<Vec<_>>()).map(drop)
    }

    /// A hypervisor like the OVN testsuite's `sim_add` + `ovn_attach n1 br-phys IP`.
    fn start_hv(&self, name: &str, ip: Ipv4Addr) -> Result<Hypervisor> {
        let dir = mkdir(&self.dir, name)?;
        self.start_vswitch(&dir)?;
        let link = self.dir.join("main").join(format!("{name}_br-phys.sock"));
        let ids = [
            format!("external-ids:system-id={name}"),
            format!("external-ids:hostname={name}"),
            format!("external-ids:ovn-remote={}", self.sb_remote()),
            "external-ids:ovn-encap-type=geneve".into(),
            format!("external-ids:ovn-encap-ip={ip}"),
        ];
        let mut args = vec!["add-br", "br-phys", "--", "add-port", "br-phys", "br-phys_n1"];
        let stream = format!("options:stream=unix:{}", link.display());
        args.extend(["--", "set", "Interface", "br-phys_n1", &stream, "--", "set", "Open_vSwitch", "."]);
        args.extend(ids.iter().map(String::as_str));
        args.extend(["--", "add-br", "br-int", "--", "set", "bridge", "br-int", "fail-mode=secure"]);
        args.push("other-config:disable-in-band=true");
        vsctl(&dir, &args)?;
        let hv = Hypervisor { name: name.to_string(), dir: dir.clone(), ip, phys_mac: String::new() };
        hv.appctl(&["netdev-dummy/ip4addr", "br-phys", &format!("{ip}/24")])?;
        hv.appctl(&["ovs/route/add", &format!("{ip}/24"), "br-phys"])?;
        let mac =
            hv.vsctl(&["get", "Interface", "br-phys", "mac_in_use"])?.trim().trim_matches('"').to_string();
        let db = format!("unix:{}", dir.join("db.sock").display());
        self.spawn(&dir, "ovn-controller", &[db], false)?;
        Ok(Hypervisor { phys_mac: mac, ..hv })
    }

    fn wait_chassis(&self) -> Result<()> {
        self.wait_for("every chassis registered in SB", || {
            let out = self.sbctl(&["--bare", "--columns=name", "list", "Chassis"]).ok()?;
            let names: Vec<&str> = out.split_whitespace().collect();
            self.hvs.iter().all(|h| names.contains(&h.name.as_str())).then_some(())
        })
    }

    /// Pre-loads every hypervisor's tunnel ARP cache with every other's `br-phys` (the
    /// testsuite's OVN_POPULATE_ARP); without it the first Geneve packets are lost.
    fn populate_tunnel_arp(&self) -> Result<()> {
        for hv in &self.hvs {
            for other in self.hvs.iter().filter(|o| o.name != hv.name) {
                hv.appctl(&["tnl/arp/set", "br-phys", &other.ip.to_string(), &other.phys_mac])?;
            }
        }
        Ok(())
    }
}

impl Drop for OvnLab {
    /// Controllers, northd and vswitchds first, then their database servers; NB last.
    fn drop(&mut self) {
        let daemons = self.daemons.get_mut().unwrap_or_else(|e| e.into_inner());
        let (mut dbs, mut others): (Vec<Daemon>, Vec<Daemon>) = daemons.drain(..).partition(|d| d.database);
        terminate(&mut others);
        terminate(&mut dbs);
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

// ---------------------------------------------------------------------------------------------
// hypervisors

/// One simulated chassis: its `ovs-vswitchd` (bridges `br-int`, `br-phys`) and `ovn-controller`.
pub struct Hypervisor {
    name: String,
    dir: PathBuf,
    ip: Ipv4Addr,
    phys_mac: String,
}

impl Hypervisor {
    /// Chassis name, system-id and hostname.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Geneve endpoint (exists only inside the dummy datapath).
    pub fn encap_ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `ovs-vsctl` against this hypervisor's database.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        vsctl(&self.dir, args)
    }

    /// `ovs-appctl` to this hypervisor's `ovs-vswitchd`.
    pub fn appctl(&self, args: &[&str]) -> Result<String> {
        vswitchd_appctl(&self.dir, args)
    }

    /// Plugs a VM interface: a dummy port `iface` on `br-int` with `external_ids:iface-id=lsp`,
    /// recording what it is sent in `IFACE-tx.pcap`.
    pub fn add_vif(&self, iface: &str, lsp: &str) -> Result<()> {
        let id = format!("external-ids:iface-id={lsp}");
        let pcap = format!("options:tx_pcap={}", self.dir.join(format!("{iface}-tx.pcap")).display());
        self.vsctl(&["add-port", "br-int", iface, "--", "set", "Interface", iface, &id, &pcap]).map(drop)
    }

    /// Unplugs a VM interface (the VM is gone from this chassis).
    pub fn del_vif(&self, iface: &str) -> Result<()> {
        self.vsctl(&["del-port", "br-int", iface]).map(drop)
    }

    /// Makes `iface` receive one frame (as if the VM had sent it); `hex` as from [`rarp_frame`].
    pub fn inject(&self, iface: &str, hex: &str) -> Result<()> {
        self.appctl(&["netdev-dummy/receive", iface, hex]).map(drop)
    }

    /// `ovs-ofctl dump-flows br-int`, parsed.
    pub fn flows(&self) -> Result<Vec<Flow>> {
        let out = ctl(&self.dir, "ovs-ofctl", &["dump-flows", "br-int"])?;
        Ok(out.lines().filter_map(Flow::parse).collect())
    }

    /// The OpenFlow port number of `iface` on `br-int`.
    pub fn ofport(&self, iface: &str) -> Result<u32> {
        let out = self.vsctl(&["get", "Interface", iface, "ofport"])?;
        out.trim().parse().with_context(|| format!("ofport of {iface}: {out:?}"))
    }

    /// Packets OVS has delivered to `iface` (its `tx pkts` counter), read live.
    pub fn tx_packets(&self, iface: &str) -> Result<u64> {
        let out = ctl(&self.dir, "ovs-ofctl", &["dump-ports", "br-int", iface])?;
        out.split("tx pkts=")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("no tx counter for {iface} in {out:?}"))
    }

    /// The flows `activation-strategy=rarp` installs on an additional chassis for a port not yet
    /// activated: RARP from `iface` to the controller, all else from `iface` dropped (table 0),
    /// and output to the port (`reg15=tunnel_key`) dropped (table 65).
    pub fn activation_flows(&self, iface: &str, tunnel_key: i64) -> Result<Vec<Flow>> {
        let in_port = format!("in_port={}", self.ofport(iface)?);
        let reg15 = format!("reg15={tunnel_key:#x}");
        Ok(self
            .flows()?
            .into_iter()
            .filter(|f| {
                (f.table == 0 && matches!(f.priority, 1000 | 1010) && f.has(&in_port))
                    || (f.table == 65 && f.priority == 1000 && f.has(&reg15))
            })
            .collect())
    }
}

/// One OpenFlow flow as `ovs-ofctl dump-flows` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub table: u32,
    pub priority: u32,
    /// Match fields, e.g. `rarp`, `in_port=5`, `reg15=0x1`.
    pub matches: Vec<String>,
    pub actions: String,
    pub n_packets: u64,
    /// The line as printed.
    pub text: String,
}

impl Flow {
    /// Parses ` cookie=…, table=0, n_packets=0, …, priority=1000,in_port=5 actions=drop`.
    pub fn parse(line: &str) -> Option<Flow> {
        let (head, actions) = line.trim().split_once(" actions=")?;
        let mut flow = Flow {
            table: 0,
            priority: 32768,
            matches: Vec::new(),
            actions: actions.to_string(),
            n_packets: 0,
            text: line.trim().to_string(),
        };
        for part in head.split(", ") {
            if let Some(v) = part.strip_prefix("table=") {
                flow.table = v.parse().ok()?;
            } else if let Some(v) = part.strip_prefix("n_packets=") {
                flow.n_packets = v.parse().ok()?;
            } else if ["cookie=", "duration=", "n_bytes=", "idle_", "hard_", "reset_counts"]
                .iter()
                .all(|p| !part.starts_with(p))
            {
                for field in part.split(',').filter(|f| !f.is_empty()) {
                    match field.strip_prefix("priority=") {
                        Some(p) => flow.priority = p.parse().ok()?,
                        None => flow.matches.push(field.to_string()),
                    }
                }
            }
        }
        Some(flow)
    }

    /// Whether `field` (e.g. `in_port=5`) is one of the match fields.
    pub fn has(&self, field: &str) -> bool {
        self.matches.iter().any(|m| m == field)
    }
}

// ---------------------------------------------------------------------------------------------
// frames

/// `00:00:00:00:00:10` → `000000000010`.
fn mac_hex(mac: &str) -> Result<String> {
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2 || u8::from_str_radix(p, 16).is_err()) {
        bail!("not a MAC address: {mac:?}");
    }
    Ok(parts.concat().to_ascii_lowercase())
}

fn ip_hex(ip: Ipv4Addr) -> String {
    ip.octets().iter().map(|b| format!("{b:02x}")).collect()
}

/// Pads a hex frame with zero bytes to the 60-byte Ethernet minimum.
fn padded(mut hex: String) -> String {
    while hex.len() < 120 {
        hex.push('0');
    }
    hex
}

/// The RARP QEMU's `announce_self` sends after a migration, as hex: broadcast, ethertype 0x8035,
/// "reverse request" with the VM's MAC as sender and target, zero IPs, 60 bytes.
pub fn rarp_frame(mac: &str) -> Result<String> {
    let m = mac_hex(mac)?;
    Ok(padded(format!("ffffffffffff{m}80350001080006040003{m}00000000{m}00000000")))
}

/// An ARP request (who has `dst_ip`, tell `src_ip`) from `src_mac`, sent to `eth_dst`
/// (unicast, or `ff:ff:ff:ff:ff:ff`), as hex.
pub fn arp_request(src_mac: &str, eth_dst: &str, src_ip: Ipv4Addr, dst_ip: Ipv4Addr) -> Result<String> {
    let (s, d) = (mac_hex(src_mac)?, mac_hex(eth_dst)?);
    let (sip, dip) = (ip_hex(src_ip), ip_hex(dst_ip));
    Ok(padded(format!("{d}{s}08060001080006040001{s}{sip}000000000000{dip}")))
}

// ---------------------------------------------------------------------------------------------
// SB Port_Binding

/// The migration-relevant part of an SB `Port_Binding`, chassis by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortBinding {
    pub logical_port: String,
    pub tunnel_key: i64,
    /// Where the port is bound as the main copy (set by ovn-controller).
    pub chassis: Option<String>,
    /// Where it is bound as an additional copy (set by ovn-controller).
    pub additional_chassis: Vec<String>,
    /// First entry of `requested-chassis` (set by northd).
    pub requested_chassis: Option<String>,
    /// The other entries (set by northd).
    pub requested_additional_chassis: Vec<String>,
    pub options: BTreeMap<String, String>,
    pub up: Option<bool>,
}

impl PortBinding {
    /// From an OVSDB row in wire format; uuids missing from `names` are kept as uuids.
    fn from_row(row: &Value, names: &HashMap<String, String>) -> PortBinding {
        let chassis = |col: &str| -> Vec<String> {
            atoms(&row[col])
                .iter()
                .filter_map(|a| match a.as_array().map(Vec::as_slice) {
                    Some([tag, Value::String(u)]) if tag == "uuid" => Some(names.get(u).unwrap_or(u).clone()),
                    _ => None,
                })
                .collect()
        };
        PortBinding {
            logical_port: row["logical_port"].as_str().unwrap_or_default().to_string(),
            tunnel_key: row["tunnel_key"].as_i64().unwrap_or_default(),
            chassis: chassis("chassis").into_iter().next(),
            additional_chassis: chassis("additional_chassis"),
            requested_chassis: chassis("requested_chassis").into_iter().next(),
            requested_additional_chassis: chassis("requested_additional_chassis"),
            options: string_map(&row["options"]),
            up: atoms(&row["up"]).first().and_then(Value::as_bool),
        }
    }

    /// The value of option `key`.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options.get(key).map(String::as_str)
    }
}

/// The atoms of an OVSDB value: `["set", [a…]]` → a…, anything else → itself.
fn atoms(v: &Value) -> Vec<Value> {
    match v.as_array().map(Vec::as_slice) {
        _ if v.is_null() => Vec::new(),
        Some([tag, Value::Array(items)]) if tag == "set" => items.clone(),
        _ => vec![v.clone()],
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    match v.as_array().map(Vec::as_slice) {
        Some([tag, Value::Array(pairs)]) if tag == "map" => pairs
            .iter()
            .filter_map(|p| Some((p.get(0)?.as_str()?.to_string(), p.get(1)?.as_str()?.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// `{uuid → name}` from `Chassis` rows selected with `_uuid` and `name`.
fn chassis_names(rows: &[Value]) -> HashMap<String, String> {
    rows.iter()
        .filter_map(|r| Some((r["_uuid"].get(1)?.as_str()?.to_string(), r["name"].as_str()?.to_string())))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// SB monitor

/// A live `monitor` of SB `Port_Binding` (and `Chassis` names) over one unix connection; every
/// row change is kept with the time it was received. Closed on drop.
pub struct SbWatch {
    shared: Arc<Shared>,
    conn: UnixStream,
}

#[derive(Default)]
struct Shared {
    state: Mutex<WatchState>,
    changed: Condvar,
}

#[derive(Default)]
struct WatchState {
    names: HashMap<String, String>,
    rows: HashMap<String, serde_json::Map<String, Value>>,
    events: Vec<(Instant, PortBinding)>,
    ready: bool,
    closed: Option<String>,
}

impl WatchState {
    /// Applies one `<table-updates>`, recording the changed bindings at `at`.
    fn apply(&mut self, updates: &Value, at: Instant) {
        for (uuid, ru) in updates["Chassis"].as_object().into_iter().flatten() {
            match ru["new"]["name"].as_str() {
                Some(name) => self.names.insert(uuid.clone(), name.to_string()),
                None => self.names.remove(uuid),
            };
        }
        for (uuid, ru) in updates["Port_Binding"].as_object().into_iter().flatten() {
            let Some(new) = ru["new"].as_object() else {
                self.rows.remove(uuid);
                continue;
            };
            let row = self.rows.entry(uuid.clone()).or_default();
            row.extend(new.clone());
            let pb = PortBinding::from_row(&Value::Object(row.clone()), &self.names);
            self.events.push((at, pb));
        }
    }
}

impl SbWatch {
    fn start(socket: &Path) -> Result<SbWatch> {
        let mut conn =
            UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
        let request = json!({"id": "lab-watch", "method": "monitor", "params": ["OVN_Southbound", null,
            {"Port_Binding": {"columns": PB_COLUMNS}, "Chassis": {"columns": ["name"]}}]});
        conn.write_all(request.to_string().as_bytes())?;
        let shared = Arc::new(Shared::default());
        let (reader, writer) = (conn.try_clone()?, conn.try_clone()?);
        let sink = shared.clone();
        std::thread::spawn(move || read_updates(reader, writer, &sink));
        let watch = SbWatch { shared, conn };
        watch.wait_state(Duration::from_secs(10), |s| s.ready.then_some(()))?;
        Ok(watch)
    }

    /// The latest binding of `lsp`, if the monitor has seen one.
    pub fn current(&self, lsp: &str) -> Option<PortBinding> {
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.events.iter().rev().find(|(_, pb)| pb.logical_port == lsp).map(|(_, pb)| pb.clone())
    }

    /// The first change of `lsp` received at or after `since` that satisfies `pred`, with its
    /// arrival time; waits for it up to `within`.
    pub fn first_since(
        &self,
        lsp: &str,
        since: Instant,
        within: Duration,
        pred: impl Fn(&PortBinding) -> bool,
    ) -> Result<(Instant, PortBinding)> {
        self.wait_state(within, |s| {
            s.events.iter().find(|(t, pb)| *t >= since && pb.logical_port == lsp && pred(pb)).cloned()
        })
        .with_context(|| format!("SB Port_Binding {lsp}: last seen {:?}", self.current(lsp)))
    }

    fn wait_state<T>(&self, within: Duration, mut probe: impl FnMut(&WatchState) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + within;
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = probe(&state) {
                return Ok(v);
            }
            if let Some(why) = &state.closed {
                bail!("SB monitor closed: {why}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("not seen on the SB monitor within {within:?}");
            }
            state = self.shared.changed.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl Drop for SbWatch {
    fn drop(&mut self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
    }
}

/// The monitor's reader thread: applies updates, answers echo requests.
fn read_updates(reader: UnixStream, mut writer: UnixStream, shared: &Shared) {
    let stream = serde_json::Deserializer::from_reader(BufReader::new(reader)).into_iter::<Value>();
    let mut why = "connection closed".to_string();
    for msg in stream {
        let at = Instant::now();
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                why = e.to_string();
                break;
            }
        };
        if msg["method"] == "echo" {
            let reply = json!({"id": msg["id"], "result": msg["params"], "error": null});
            let _ = writer.write_all(reply.to_string().as_bytes());
            continue;
        }
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if msg["id"] == "lab-watch" && !msg["error"].is_null() {
            state.closed = Some(format!("monitor refused: {}", msg["error"]));
        } else if msg["id"] == "lab-watch" {
            state.apply(&msg["result"], at);
            state.ready = true;
        } else if msg["method"] == "update" {
            state.apply(&msg["params"][1], at);
        }
        drop(state);
        shared.changed.notify_all();
    }
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    state.closed = Some(why);
    drop(state);
    shared.changed.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarp_is_qemu_announce_self() {
        let f = rarp_frame("00:00:00:00:00:10").expect("mac");
        assert_eq!(f.len(), 120, "60 bytes");
        assert_eq!(
            &f[..84],
            "ffffffffffff000000000010803500010800060400030000000000100000000000000000001000000000"
        );
        assert!(f[84..].chars().all(|c| c == '0'));
        assert!(rarp_frame("00:00:00:00:10").is_err());
    }

    #[test]
    fn arp_request_layout() {
        let f = arp_request(
            "00:00:00:00:00:01",
            "00:00:00:00:00:10",
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 10),
        )
        .expect("frame");
        assert_eq!(
            &f[..84],
            "000000000010000000000001080600010800060400010000000000010a0000010000000000000a00000a"
        );
        assert_eq!(f.len(), 120);
    }

    #[test]
    fn flow_lines_parse() {
        let line = " cookie=0x1f5c4b2e, duration=1.234s, table=0, n_packets=3, n_bytes=180, idle_age=0, \
                    priority=1010,rarp,in_port=5 actions=controller(userdata=00.00.00.1a),resubmit(,8)";
        let f = Flow::parse(line).expect("flow");
        assert_eq!((f.table, f.priority, f.n_packets), (0, 1010, 3));
        assert_eq!(f.matches, ["rarp", "in_port=5"]);
        assert!(f.has("in_port=5") && !f.has("in_port=50"));
        assert!(f.actions.starts_with("controller("));
        let f = Flow::parse(" cookie=0x0, duration=2s, table=65, n_packets=0, n_bytes=0, priority=1000,reg15=0x1,metadata=0x1 actions=drop").expect("flow");
        assert_eq!((f.table, f.priority), (65, 1000));
        assert!(f.has("reg15=0x1"));
        assert_eq!(Flow::parse("NXST_FLOW reply (xid=0x4):"), None);
    }

    #[test]
    fn port_binding_row_resolves_chassis() {
        let names =
            HashMap::from([("u1".to_string(), "hv1".to_string()), ("u2".to_string(), "hv2".to_string())]);
        let row = json!({
            "logical_port": "vm", "tunnel_key": 2,
            "chassis": ["uuid", "u1"], "additional_chassis": ["set", [["uuid", "u2"]]],
            "requested_chassis": ["uuid", "u1"], "requested_additional_chassis": ["uuid", "u2"],
            "options": ["map", [["activation-strategy", "rarp"], ["requested-chassis", "hv1,hv2"]]],
            "up": ["set", []]});
        let pb = PortBinding::from_row(&row, &names);
        assert_eq!(pb.chassis.as_deref(), Some("hv1"));
        assert_eq!(pb.additional_chassis, ["hv2"]);
        assert_eq!(pb.requested_chassis.as_deref(), Some("hv1"));
        assert_eq!(pb.requested_additional_chassis, ["hv2"]);
        assert_eq!(pb.option("activation-strategy"), Some("rarp"));
        assert_eq!((pb.up, pb.tunnel_key), (None, 2));
        let row = json!({"logical_port": "vm", "chassis": ["set", []], "up": true, "options": ["map", []]});
        let pb = PortBinding::from_row(&row, &names);
        assert_eq!((pb.chassis, pb.up), (None, Some(true)));
        assert!(pb.additional_chassis.is_empty() && pb.options.is_empty());
    }
}
