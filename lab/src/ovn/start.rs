//! Bringing a lab up: the central databases and northd, the "main" switch that joins the
//! hypervisors' physical bridges, the hypervisors themselves.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};

use super::hypervisor::Hypervisor;
use super::process::{accepts, control_socket, ctl, mkdir, need_file, run_in, vsctl};
use super::{OvnLab, SB_SCHEMA, VSWITCH_SCHEMA};
use crate::sandbox::{self, NbServer};

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
