//! A throw-away OVN deployment on one machine, for the end-to-end tests and the demo.
//!
//! [`OvnLab::start`] runs NB and SB `ovsdb-server`, `ovn-northd`, and simulated hypervisors: each
//! one an `ovsdb-server`, an `ovs-vswitchd` on the dummy (userspace) datapath and an
//! `ovn-controller`. The hypervisors' `br-phys` bridges are joined through a "main" vswitchd
//! over unix stream sockets, and Geneve tunnels run between them on 192.168.0.x addresses that
//! exist only inside OVS. Everything lives under one directory: no default paths, unix sockets
//! plus one `ptcp:0:127.0.0.1` listener on SB, no fixed ports. Dropping the lab stops every
//! daemon it started. The recipe and its traps are in the project's lab notes.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::client::Blocking;
use crate::sandbox::{self, NbServer};

mod binding;
mod frames;
mod hypervisor;
mod process;
mod start;
mod watch;

pub use binding::PortBinding;
pub use frames::{arp_request, rarp_frame};
pub use hypervisor::{Flow, Hypervisor};
pub(crate) use process::{accepts, control_socket, ctl, mkdir, vsctl, vswitchd_appctl};
pub use watch::SbWatch;

use process::{poll, terminate, Daemon};

/// Where Debian's `ovn-central` installs the SB schema.
pub const SB_SCHEMA: &str = "/usr/share/ovn/ovn-sb.ovsschema";
/// Where Debian's `openvswitch-switch` installs the Open_vSwitch schema.
pub const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// How long start-up steps (a daemon's socket, chassis registration) may take.
const START_TIMEOUT: Duration = Duration::from_secs(20);

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
        let result = Blocking::unix(&self.sb_socket())?.transact("OVN_Southbound", binding::query(lsp))?;
        binding::queried(&result).ok_or_else(|| anyhow!("no SB Port_Binding for {lsp}"))
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
