//! Real packets through OVN during a live migration, on this kind of machine: every chassis is
//! a network namespace with its own `ovsdb-server`, `ovs-vswitchd` on the userspace (netdev)
//! datapath and `ovn-controller`; Geneve runs between them over an underlay bridge in a
//! namespace of its own; NB, SB and `ovn-northd` run in the root namespace on unix sockets
//! ([`OvnLab::start_central`]). A `peer` namespace holds the other end of the test traffic; the
//! VM is a namespace whose sockets survive the move ([`PacketLab::namespace_vm`]).
//!
//! Nothing is created in the root namespace: every veth is made directly inside its two
//! namespaces, and every namespace this lab made is deleted when it is dropped (which removes
//! its veths), after every daemon it started has been stopped. The recipe and its pitfalls
//! (checksum offload on veths, carrier loss flushing the guest's ARP cache, bridge port states)
//! are in the project's lab notes.
//!
//! [`run`] drives one migration and measures it.

pub mod qemu;
pub mod run;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::ovn::{accepts, control_socket, ctl, mkdir, vsctl, vswitchd_appctl, OvnLab, SbWatch};
use crate::sandbox;

/// The traffic and VM-side helper, written into the lab's directory.
const HELPER: &str = include_str!("helper.py");

/// The VM's and the peer's addresses on the logical switch.
pub const VM_IP: &str = "10.100.0.10";
pub const VM_MAC: &str = "0a:00:00:00:00:10";
pub const PEER_IP: &str = "10.100.0.1";
pub const PEER_MAC: &str = "0a:00:00:00:00:01";
/// The overlay MTU: the underlay's 1500 minus Geneve's 58 bytes, rounded down.
pub(crate) const MTU: &str = "1400";
/// The helper's TCP echo and UDP echo ports in the VM.
pub const TCP_PORT: u16 = 5001;
pub const UDP_PORT: u16 = 5002;

/// Runs `ip ARGS…`.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    sandbox::run_tool("ip", args).map(drop)
}

/// Runs `PROG ARGS…` inside network namespace `ns`.
pub(crate) fn in_ns(ns: &str, prog: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns, prog];
    full.extend_from_slice(args);
    sandbox::run_tool("ip", &full)
}

/// `ethtool -K DEV tx off tso off gso off` in `ns`: the OVS userspace datapath reads veths with
/// AF_PACKET and forwards what it gets; a packet the kernel left to the NIC to checksum arrives
/// with a wrong TCP checksum (ICMP works, TCP does not).
pub(crate) fn no_offload(ns: &str, dev: &str) -> Result<()> {
    sandbox::require("ethtool")?;
    in_ns(ns, "ethtool", &["-K", dev, "tx", "off", "tso", "off", "gso", "off"]).map(drop)
}

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// The network namespaces of one lab, deleted (with their veths) when dropped.
struct Namespaces {
    prefix: String,
    made: Vec<String>,
}

impl Namespaces {
    fn new() -> Namespaces {
        let n = LAB_SEQ.fetch_add(1, Ordering::Relaxed);
        Namespaces { prefix: format!("nbp{}x{n}", std::process::id()), made: Vec::new() }
    }

    /// Namespaces left by a lab whose process died without cleaning up (SIGKILL): named
    /// `nbp<pid>x…` with that pid gone. Their processes are killed, then they are deleted.
    fn reap_stale() {
        let Ok(list) = sandbox::run_tool("ip", &["netns", "list"]) else { return };
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(pid) = ns.strip_prefix("nbp").and_then(|r| r.split('x').next()) else { continue };
            let Ok(pid) = pid.parse::<u32>() else { continue };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            if let Ok(pids) = sandbox::run_tool("ip", &["netns", "pids", ns]) {
                for p in pids.split_whitespace() {
                    let _ = Command::new("kill").args(["-9", p]).status();
                }
            }
            let _ = sandbox::run_tool("ip", &["netns", "del", ns]);
        }
    }

    /// Creates `<prefix>-<name>` with loopback up and IPv6 off (no ND/MLD chatter).
    fn add(&mut self, name: &str) -> Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        // Recorded first: an error half way still gets it deleted.
        self.made.push(ns.clone());
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        for key in ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"] {
            in_ns(&ns, "sysctl", &["-qw", key])?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.made.drain(..).rev() {
            let _ = sandbox::run_tool("ip", &["netns", "del", &ns]);
        }
    }
}

/// One chassis: a namespace with its vswitchd (bridges `br-phy`, `br-int`) and ovn-controller.
pub struct Chassis {
    pub name: String,
    pub ns: String,
    dir: PathBuf,
    /// The Geneve endpoint, on `br-phy`.
    pub ip: String,
    mac: String,
}

impl Chassis {
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        vsctl(&self.dir, args)
    }

    pub fn appctl(&self, args: &[&str]) -> Result<String> {
        vswitchd_appctl(&self.dir, args)
    }

    /// Plugs `vif` (a device in this chassis' namespace) into `br-int` for logical port `lsp`.
    pub fn plug(&self, vif: &str, lsp: &str) -> Result<()> {
        let id = format!("external_ids:iface-id={lsp}");
        self.vsctl(&["--may-exist", "add-port", "br-int", vif, "--", "set", "Interface", vif, &id]).map(drop)
    }

    pub fn unplug(&self, vif: &str) -> Result<()> {
        self.vsctl(&["--if-exists", "del-port", "br-int", vif]).map(drop)
    }
}

/// The lab: central OVN, the underlay, the chassis, the peer. Field order is drop order: the
/// VM's processes, then every daemon, then the namespaces.
pub struct PacketLab {
    vm: Option<NamespaceVm>,
    lab: OvnLab,
    ns: Namespaces,
    dir: PathBuf,
    chassis: Vec<Chassis>,
    peer_ns: String,
    helper: PathBuf,
}

impl PacketLab {
    /// Starts central OVN and `n` chassis (`hv1`…`hvN`, 2 or 3), the peer on `peer_on`, and a
    /// logical switch `ls0` with ports `peer` and `vm` (the VM pinned to `hv1`). `dir` must exist
    /// and outlive the lab.
    pub fn start(dir: &Path, n: usize, peer_on: &str) -> Result<PacketLab> {
        if !(2..=3).contains(&n) {
            bail!("the real-packet lab has 2 or 3 chassis, not {n}");
        }
        for tool in ["ip", "bridge", "ethtool", "python3", "ovs-vswitchd", "ovn-controller", "ovs-vsctl"] {
            sandbox::require(tool)?;
        }
        Namespaces::reap_stale();
        let lab = OvnLab::start_central(dir)?;
        let helper = dir.join("helper.py");
        std::fs::write(&helper, HELPER).context("writing the traffic helper")?;
        let mut this = PacketLab {
            vm: None,
            lab,
            ns: Namespaces::new(),
            dir: dir.to_path_buf(),
            chassis: Vec::new(),
            peer_ns: String::new(),
            helper,
        };
        let ul = this.ns.add("ul")?;
        ip(&["-n", &ul, "link", "add", "ul0", "type", "bridge"])?;
        ip(&["-n", &ul, "link", "set", "ul0", "up"])?;
        for i in 1..=n {
            let c = this.start_chassis(&ul, i)?;
            this.chassis.push(c);
        }
        // The tunnel neighbours, as OVN's testsuite pre-populates them: no run depends on ARP
        // learning between the br-phy taps.
        for c in &this.chassis {
            for o in this.chassis.iter().filter(|o| o.name != c.name) {
                c.appctl(&["tnl/neigh/set", "br-phy", &o.ip, &o.mac])?;
            }
        }
        this.lab.wait_until("every chassis registered in SB", || {
            let out = this.lab.sbctl(&["--bare", "--columns=name", "list", "Chassis"]).ok()?;
            let names: Vec<&str> = out.split_whitespace().collect();
            this.chassis.iter().all(|c| names.contains(&c.name.as_str())).then_some(())
        })?;
        this.add_switch(peer_on)?;
        let peer = this.ns.add("peer")?;
        this.veth(&peer, "eth0", this.hv(peer_on)?, "vif-peer")?;
        ip(&["-n", &peer, "link", "set", "eth0", "address", PEER_MAC])?;
        ip(&["-n", &peer, "addr", "add", &format!("{PEER_IP}/24"), "dev", "eth0"])?;
        ip(&["-n", &peer, "link", "set", "eth0", "up"])?;
        this.hv(peer_on)?.plug("vif-peer", "peer")?;
        this.peer_ns = peer;
        Ok(this)
    }

    /// The logical switch `ls0` with ports `peer` (pinned to `peer_on`) and `vm` (pinned to hv1).
    fn add_switch(&self, peer_on: &str) -> Result<()> {
        self.lab
            .nbctl(&[
                "ls-add",
                "ls0",
                "--",
                "lsp-add",
                "ls0",
                "peer",
                "--",
                "lsp-set-addresses",
                "peer",
                &format!("{PEER_MAC} {PEER_IP}"),
                "--",
                "lsp-set-options",
                "peer",
                &format!("requested-chassis={peer_on}"),
                "--",
                "lsp-add",
                "ls0",
                "vm",
                "--",
                "lsp-set-addresses",
                "vm",
                &format!("{VM_MAC} {VM_IP}"),
                "--",
                "lsp-set-options",
                "vm",
                "requested-chassis=hv1",
            ])
            .map(drop)
    }

    fn start_chassis(&mut self, ul: &str, i: usize) -> Result<Chassis> {
        let name = format!("hv{i}");
        let ns = self.ns.add(&name)?;
        let dir = mkdir(&self.dir, &name)?;
        self.lab.start_conf_db(&dir, &ns)?;
        let db = format!("unix:{}", dir.join("db.sock").display());
        ctl(&dir, "ovs-vsctl", &[&format!("--db={db}"), "--no-wait", "init"])?;
        self.lab.spawn_in(&dir, Some(&ns), "ovs-vswitchd", std::slice::from_ref(&db), false)?;
        let sock = control_socket(&dir, "ovs-vswitchd");
        self.lab.wait_until("ovs-vswitchd control socket", || accepts(&sock).then_some(()))?;
        // The underlay: a veth from the underlay bridge straight into the chassis.
        ip(&["link", "add", &name, "netns", ul, "type", "veth", "peer", "name", "eth-ul", "netns", &ns])?;
        ip(&["-n", ul, "link", "set", &name, "master", "ul0", "up"])?;
        ip(&["-n", &ns, "link", "set", "eth-ul", "up"])?;
        let (addr, mac) = (format!("10.99.0.{i}"), format!("02:99:00:00:00:{i:02x}"));
        let c = Chassis {
            name: name.clone(),
            ns: ns.clone(),
            dir: dir.clone(),
            ip: addr.clone(),
            mac: mac.clone(),
        };
        // The tunnel endpoint lives on a bridge of the same netdev datapath (its LOCAL port is
        // a tap in the namespace, where ovs-vswitchd takes its routes from).
        c.vsctl(&[
            "add-br",
            "br-phy",
            "--",
            "set",
            "bridge",
            "br-phy",
            "datapath_type=netdev",
            "fail-mode=standalone",
            &format!("other-config:hwaddr={mac}"),
            "other-config:disable-in-band=true",
            "--",
            "add-port",
            "br-phy",
            "eth-ul",
        ])?;
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "br-phy"])?;
        ip(&["-n", &ns, "link", "set", "br-phy", "up"])?;
        let ids = [
            format!("external-ids:system-id={name}"),
            format!("external-ids:hostname={name}"),
            format!("external-ids:ovn-remote={}", self.lab.sb_remote()),
            "external-ids:ovn-encap-type=geneve".into(),
            format!("external-ids:ovn-encap-ip={addr}"),
            "external-ids:ovn-bridge-datapath-type=netdev".into(),
        ];
        let mut args = vec!["set", "Open_vSwitch", "."];
        args.extend(ids.iter().map(String::as_str));
        args.extend(["--", "--may-exist", "add-br", "br-int", "--", "set", "bridge", "br-int"]);
        args.extend(["datapath_type=netdev", "fail-mode=secure", "other-config:disable-in-band=true"]);
        c.vsctl(&args)?;
        self.lab.spawn_in(&dir, Some(&ns), "ovn-controller", &[db], false)?;
        Ok(c)
    }

    /// A veth between `ns:dev` (a VM-side NIC: MTU 1400, no offloads) and `vif` in `hv`'s
    /// namespace (up).
    fn veth(&self, ns: &str, dev: &str, hv: &Chassis, vif: &str) -> Result<()> {
        ip(&["link", "add", dev, "netns", ns, "type", "veth", "peer", "name", vif, "netns", &hv.ns])?;
        ip(&["-n", ns, "link", "set", dev, "mtu", MTU])?;
        ip(&["-n", &hv.ns, "link", "set", vif, "mtu", MTU])?;
        ip(&["-n", &hv.ns, "link", "set", vif, "up"])?;
        no_offload(ns, dev)
    }

    pub fn hv(&self, name: &str) -> Result<&Chassis> {
        self.chassis.iter().find(|c| c.name == name).ok_or_else(|| anyhow!("no chassis {name} in the lab"))
    }

    pub fn chassis(&self) -> &[Chassis] {
        &self.chassis
    }

    /// `unix:…` of NB (for the proxy's `--upstream`, and the direct writes).
    pub fn nb_remote(&self) -> String {
        self.lab.nb_remote()
    }

    pub fn nb_socket(&self) -> PathBuf {
        PathBuf::from(self.lab.nb_remote().trim_start_matches("unix:"))
    }

    pub fn sb_remote(&self) -> String {
        self.lab.sb_remote()
    }

    pub fn nbctl(&self, args: &[&str]) -> Result<String> {
        self.lab.nbctl(args)
    }

    pub fn watch_sb(&self) -> Result<SbWatch> {
        self.lab.watch_sb()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The namespace VM, pre-plugged on both chassis as libvirt/os-vif do: bridge `br0` (the
    /// VM's NIC, its MAC and address) with two ports, `tap-src` (↔ `vif-src` on hv1) and
    /// `tap-dst` (↔ `vif-dst` on hv2), both bound to the logical port `vm`. A bridge port in
    /// state `disabled` is "no running VM behind this VIF"; the VM runs behind `tap-src`. Its
    /// helper (TCP/UDP echo, sniffers, QEMU's RARP schedule) starts with it.
    pub fn namespace_vm(&mut self) -> Result<()> {
        let vm = self.ns.add("vm")?;
        ip(&["-n", &vm, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &vm, "link", "set", "br0", "address", VM_MAC, "mtu", MTU])?;
        for (tap, hv, vif) in [("tap-src", "hv1", "vif-src"), ("tap-dst", "hv2", "vif-dst")] {
            self.veth(&vm, tap, self.hv(hv)?, vif)?;
            ip(&["-n", &vm, "link", "set", tap, "master", "br0", "up"])?;
        }
        ip(&["-n", &vm, "addr", "add", &format!("{VM_IP}/24"), "dev", "br0"])?;
        ip(&["-n", &vm, "link", "set", "br0", "up"])?;
        no_offload(&vm, "br0")?;
        // No STP; the destination port starts disabled. (Enable before disable when flipping:
        // a bridge without a forwarding port loses carrier, which flushes the VM's ARP cache.)
        sandbox::run_tool("bridge", &["-n", &vm, "link", "set", "dev", "tap-dst", "state", "0"])?;
        self.hv("hv1")?.plug("vif-src", "vm")?;
        self.hv("hv2")?.plug("vif-dst", "vm")?;
        let helper = Helper::start(
            &vm,
            &self.helper,
            &["vm", VM_IP, &TCP_PORT.to_string(), &UDP_PORT.to_string(), "br0", "tap-src,tap-dst", VM_MAC],
        )?;
        self.vm = Some(NamespaceVm { ns: vm, helper });
        Ok(())
    }

    pub fn vm(&self) -> Result<&NamespaceVm> {
        self.vm.as_ref().ok_or_else(|| anyhow!("the lab has no namespace VM"))
    }

    pub fn vm_mut(&mut self) -> Result<&mut NamespaceVm> {
        self.vm.as_mut().ok_or_else(|| anyhow!("the lab has no namespace VM"))
    }

    /// Starts the peer's traffic for `secs` seconds; its result is read with
    /// [`Traffic::finish`].
    pub fn traffic(&self, secs: f64) -> Result<Traffic> {
        self.traffic_with(secs, false)
    }

    /// The peer's traffic, its probes ICMP echo requests (`icmp`) or UDP to the helper's echo.
    pub fn traffic_with(&self, secs: f64, icmp: bool) -> Result<Traffic> {
        let (tcp, udp, secs) = (TCP_PORT.to_string(), UDP_PORT.to_string(), secs.to_string());
        let mut args = vec!["peer", VM_IP, &tcp, &udp, &secs];
        if icmp {
            args.push("icmp");
        }
        let helper = Helper::start(&self.peer_ns, &self.helper, &args)?;
        Ok(Traffic { helper })
    }

    pub fn peer_ns(&self) -> &str {
        &self.peer_ns
    }

    /// Adds a namespace of this lab (deleted with it).
    pub fn add_namespace(&mut self, name: &str) -> Result<String> {
        self.ns.add(name)
    }

    pub fn helper_path(&self) -> &Path {
        &self.helper
    }
}

/// The namespace VM: its namespace and its helper.
pub struct NamespaceVm {
    pub ns: String,
    helper: Helper,
}

impl NamespaceVm {
    /// The switchover: the VM now runs behind `tap-dst` (hv2), no longer behind `tap-src`.
    pub fn switch_to_destination(&self) -> Result<()> {
        self.flip("tap-dst", "tap-src")
    }

    /// Back on the source for the next run.
    pub fn switch_to_source(&self) -> Result<()> {
        self.flip("tap-src", "tap-dst")
    }

    fn flip(&self, on: &str, off: &str) -> Result<()> {
        let batch = format!("link set dev {on} state 3\nlink set dev {off} state 0\n");
        let mut child = Command::new(sandbox::require("bridge")?)
            .args(["-n", &self.ns, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("bridge -batch")?;
        child.stdin.take().context("stdin")?.write_all(batch.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("bridge -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// QEMU's announce schedule from the VM's MAC; the time the first RARP was sent.
    pub fn rarp(&mut self) -> Result<f64> {
        let v = self.helper.ask("rarp", "rarp")?;
        v["rarp"].as_f64().ok_or_else(|| anyhow!("no rarp time in {v}"))
    }

    /// Forgets what the sniffers on the two taps saw.
    pub fn reset_sniffers(&mut self) -> Result<()> {
        self.helper.ask("reset", "reset").map(drop)
    }

    /// Probes seen on the source tap, on the destination tap, and on both.
    pub fn sniffed(&mut self) -> Result<(u64, u64, u64)> {
        let v = self.helper.ask("dump", "seen")?;
        let n = |k: &str| v["seen"][k].as_u64().unwrap_or(0);
        Ok((n("tap-src"), n("tap-dst"), v["both"].as_u64().unwrap_or(0)))
    }
}

/// A helper process in a namespace, talked to by JSON lines.
pub(crate) struct Helper {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
}

impl Helper {
    pub(crate) fn start(ns: &str, script: &Path, args: &[&str]) -> Result<Helper> {
        let mut child = Command::new(sandbox::require("ip")?)
            .args(["netns", "exec", ns, "python3", "-u"])
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the lab helper")?;
        let stdin = child.stdin.take().context("helper stdin")?;
        let stdout = child.stdout.take().context("helper stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let mut h = Helper { child, stdin, lines };
        if args[0] == "vm" || args[0] == "sniff-rarp" {
            h.wait_for("ready", Duration::from_secs(10))?;
        }
        Ok(h)
    }

    fn wait_for(&mut self, key: &str, within: Duration) -> Result<Value> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v.get(key).is_some() => return Ok(v),
                Ok(_) => continue,
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    bail!("the lab helper did not answer {key:?} within {within:?} (exited: {status:?})");
                }
            }
        }
    }

    /// The next line that has `key`.
    pub(crate) fn first(&mut self, key: &str, within: Duration) -> Result<Value> {
        self.wait_for(key, within)
    }

    fn ask(&mut self, cmd: &str, key: &str) -> Result<Value> {
        writeln!(self.stdin, "{cmd}").context("writing to the lab helper")?;
        self.stdin.flush()?;
        self.wait_for(key, Duration::from_secs(10))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peer's traffic of one run.
pub struct Traffic {
    helper: Helper,
}

impl Traffic {
    /// Waits for the result (the helper prints it when its time is up).
    pub fn finish(mut self, within: Duration) -> Result<Value> {
        self.helper.wait_for("tcp", within)
    }
}
