//! End to end on real OVN: ovn-northd and two simulated hypervisors (`ovn_nb_lab::ovn`), the
//! proxy binary in front of NB, and a CMS that writes only migration tags, only through the
//! proxy. Every scenario is checked where it matters: SB `Port_Binding` (what northd and the
//! ovn-controllers made of the options the proxy wrote) and the datapath (flows on `br-int`,
//! packets delivered to the VM interfaces).

use crate::common::{ovn_nbctl, Proxy, Raw};

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use ovn_nb_lab::ovn::{arp_request, rarp_frame, Flow, Hypervisor, OvnLab, PortBinding, SbWatch};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(10);

const VM_MAC: &str = "00:00:00:00:00:10";
const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
/// `peer` on hv1 sends the test traffic.
const PEER_MAC: &str = "00:00:00:00:00:01";
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// `w1` on hv1 and `w2` on hv2 only witness that the frames sent before have crossed the network.
const W1_MAC: &str = "00:00:00:00:00:03";
const W1_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const W2_MAC: &str = "00:00:00:00:00:02";
const W2_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// Polls `probe` until it yields a value, for at most [`DEADLINE`].
fn until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The lab, the proxy in front of its NB, switch `ls0` (`vlan-passthru`, so ARP reaches the
/// VIFs) with `vm` placed on hv1, `peer` and `w1` on hv1, `w2` on hv2. Field order: the proxy stops
/// first, then the lab, then its directory goes (kept when the test fails, for the logs; also
/// kept with `E2E_KEEP=1`).
struct World {
    proxy: Proxy,
    lab: OvnLab,
    dir: Option<tempfile::TempDir>,
    /// The proxy's flags, to start it again.
    args: Vec<String>,
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("E2E_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("lab logs kept in {}", dir.keep().display());
            }
        }
    }
}

impl World {
    fn start() -> World {
        World::start_with(&[])
    }

    /// The proxy watches the lab's SB (`--sb-db`) for its timelines, plus `extra` flags.
    fn start_with(extra: &[&str]) -> World {
        let dir = tempfile::Builder::new().prefix("nbproxy-e2e.").tempdir().expect("temp dir");
        let t0 = Instant::now();
        let lab = OvnLab::start(dir.path(), &["hv1", "hv2"]).unwrap_or_else(|e| panic!("lab: {e:#}"));
        eprintln!("lab ready in {:?} ({})", t0.elapsed(), dir.path().display());
        let mut args = vec![format!("--sb-db={}", lab.sb_remote())];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut proxy = Proxy::start(&lab.nb_remote(), &args.iter().map(String::as_str).collect::<Vec<_>>());
        proxy.wait_log("port cache synchronised", DEADLINE);
        let w = World { proxy, lab, dir: Some(dir), args };
        let mut setup: Vec<String> = "ls-add ls0 -- set Logical_Switch ls0 other_config:vlan-passthru=true"
            .split(' ')
            .map(String::from)
            .collect();
        for (lsp, mac, ip) in
            [("vm", VM_MAC, VM_IP), ("peer", PEER_MAC, PEER_IP), ("w1", W1_MAC, W1_IP), ("w2", W2_MAC, W2_IP)]
        {
            setup.extend(["--", "lsp-add", "ls0", lsp, "--", "lsp-set-addresses", lsp].map(String::from));
            setup.push(format!("{mac} {ip}"));
        }
        setup.extend(["--", "lsp-set-options", "vm", "requested-chassis=hv1"].map(String::from));
        w.cms(&setup.iter().map(String::as_str).collect::<Vec<_>>());
        w.plug("hv1", "vm");
        w.plug("hv1", "peer");
        w.plug("hv1", "w1");
        w.plug("hv2", "w2");
        for (lsp, hv) in [("vm", "hv1"), ("peer", "hv1"), ("w1", "hv1"), ("w2", "hv2")] {
            w.pb_of(lsp, &format!("{lsp} bound on {hv} and up"), |pb| {
                pb.chassis.as_deref() == Some(hv) && pb.up == Some(true)
            });
        }
        w.settle();
        w
    }

    /// The proxy killed (SIGKILL) and started again with the same flags, once `while_down` ran.
    fn restart_proxy(&mut self, while_down: impl FnOnce(&World)) {
        self.proxy.kill9();
        while_down(self);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.proxy = Proxy::start(&self.lab.nb_remote(), &args);
        self.proxy.wait_log("port cache synchronised", DEADLINE);
    }

    /// `vm`'s options, read directly from NB.
    fn options(&self) -> String {
        self.lab.nbctl(&["get", "Logical_Switch_Port", "vm", "options"]).expect("options").trim().to_string()
    }

    fn hv(&self, name: &str) -> &Hypervisor {
        self.lab.hv(name).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The CMS: `ovn-nbctl` through the proxy.
    fn cms(&self, args: &[&str]) {
        ovn_nbctl(&self.proxy.unix_remote(), args).unwrap_or_else(|e| panic!("CMS write: {e:#}"));
    }

    fn tag(&self, key: &str, value: &str) {
        self.cms(&["set", "Logical_Switch_Port", "vm", &format!("external_ids:{key}={value}")]);
    }

    fn untag(&self, keys: &[&str]) {
        let mut args = vec!["remove", "Logical_Switch_Port", "vm", "external_ids"];
        args.extend_from_slice(keys);
        self.cms(&args);
    }

    /// Plugs the VM interface `iface` (bound to the LSP of the same name) on `hv`.
    fn plug(&self, hv: &str, iface: &str) {
        self.hv(hv).add_vif(iface, iface).unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn unplug(&self, hv: &str, iface: &str) {
        self.hv(hv).del_vif(iface).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Waits until `vm`'s SB Port_Binding satisfies `pred`; returns it.
    fn pb(&self, what: &str, pred: impl Fn(&PortBinding) -> bool) -> PortBinding {
        self.pb_of("vm", what, pred)
    }

    fn pb_of(&self, lsp: &str, what: &str, pred: impl Fn(&PortBinding) -> bool) -> PortBinding {
        let mut last = None;
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.lab.port_binding(lsp) {
                Ok(pb) if pred(&pb) => return pb,
                Ok(pb) => last = Some(pb),
                Err(e) => eprintln!("{e:#}"),
            }
            assert!(Instant::now() < deadline, "SB: not within {DEADLINE:?}: {what}; last seen {last:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Northd and both controllers have caught up: the flows match what SB says now.
    fn settle(&self) {
        self.lab.sync_hv().unwrap_or_else(|e| panic!("sync: {e:#}"));
    }

    /// The activation flows for `vm` on `hv` (none if `vm` is not plugged there).
    fn activation_flows(&self, hv: &str) -> Vec<Flow> {
        let key = self.lab.port_binding("vm").expect("pb").tunnel_key;
        match self.hv(hv).ofport("vm") {
            Ok(_) => self.hv(hv).activation_flows("vm", key).unwrap_or_else(|e| panic!("{e:#}")),
            Err(_) => Vec::new(),
        }
    }

    /// Packets delivered to `iface` on `hv` (0 if it is not plugged there).
    fn delivered(&self, hv: &str, iface: &str) -> u64 {
        match self.hv(hv).ofport(iface) {
            Ok(_) => self.hv(hv).tx_packets(iface).unwrap_or_else(|e| panic!("{e:#}")),
            Err(_) => 0,
        }
    }

    /// Sends `frame` from `iface` on `hv`, then a witness frame between `w1`@hv1 and `w2`@hv2 in
    /// the same direction. Frames cross the simulated network in order, so once the witness
    /// has arrived, whatever the first frame could reach it has reached. Returns how many
    /// packets each of `targets` got meanwhile.
    fn send(&self, (hv, iface): (&str, &str), frame: &str, targets: &[(&str, &str)]) -> Vec<u64> {
        let before: Vec<u64> = targets.iter().map(|(h, i)| self.delivered(h, i)).collect();
        let (w_from, w_iface, w_to, w_dst) = if hv == "hv1" {
            ("hv1", "w1", ("hv2", "w2"), arp_request(W1_MAC, W2_MAC, W1_IP, W2_IP))
        } else {
            ("hv2", "w2", ("hv1", "w1"), arp_request(W2_MAC, W1_MAC, W2_IP, W1_IP))
        };
        let witness_before = self.delivered(w_to.0, w_to.1);
        self.hv(hv).inject(iface, frame).unwrap_or_else(|e| panic!("{e:#}"));
        self.hv(w_from).inject(w_iface, &w_dst.expect("frame")).unwrap_or_else(|e| panic!("{e:#}"));
        until(&format!("witness frame reaches {}@{}", w_to.1, w_to.0), || {
            (self.delivered(w_to.0, w_to.1) > witness_before).then_some(())
        });
        targets.iter().zip(before).map(|((h, i), b)| self.delivered(h, i) - b).collect()
    }

    /// One ARP from `peer`@hv1 to `vm`: how many copies reached vm@hv1 and vm@hv2.
    fn arp_to_vm(&self) -> (u64, u64) {
        let frame = arp_request(PEER_MAC, VM_MAC, PEER_IP, VM_IP).expect("frame");
        let got = self.send(("hv1", "peer"), &frame, &[("hv1", "vm"), ("hv2", "vm")]);
        (got[0], got[1])
    }

    /// One ARP from `vm` on `hv` to `peer`: whether it arrived.
    fn arp_from_vm(&self, hv: &str) -> u64 {
        let frame = arp_request(VM_MAC, PEER_MAC, VM_IP, PEER_IP).expect("frame");
        self.send((hv, "vm"), &frame, &[("hv1", "peer")])[0]
    }

    /// `n_packets` of one of vm's activation drop flows on hv2: table 0 (what the VM sends) or
    /// table 65 (what is sent to the VM).
    fn drop_counter(&self, table: u32) -> u64 {
        let flows = self.activation_flows("hv2");
        let f = flows
            .iter()
            .find(|f| f.table == table && f.priority == 1000)
            .unwrap_or_else(|| panic!("no table {table} activation drop flow on hv2: {flows:#?}"));
        f.n_packets
    }

    /// Tag `migration-destination=hv2`, plug the VM on hv2: both bound, hv2 blocked.
    fn start_migration(&self) -> PortBinding {
        self.tag("migration-destination", "hv2");
        self.pb("northd: requested hv1 + additional hv2", |pb| {
            pb.requested_chassis.as_deref() == Some("hv1") && pb.requested_additional_chassis == ["hv2"]
        });
        self.plug("hv2", "vm");
        let pb = self.pb("hv2 binds the additional copy, port up", |pb| {
            pb.chassis.as_deref() == Some("hv1") && pb.additional_chassis == ["hv2"] && pb.up == Some(true)
        });
        assert_eq!(pb.option("activation-strategy"), Some("rarp"), "{pb:#?}");
        assert_eq!(pb.option("requested-chassis"), Some("hv1,hv2"), "{pb:#?}");
        assert_eq!(pb.option("additional-chassis-activated"), None, "{pb:#?}");
        self.settle();
        pb
    }

    /// hv2 holds the three activation flows and the port is reachable only on hv1.
    fn assert_destination_blocked(&self) {
        let flows = until("activation flows on hv2", || {
            let f = self.activation_flows("hv2");
            (f.len() == 3).then_some(f)
        });
        assert!(flows
            .iter()
            .any(|f| f.has("rarp") && f.priority == 1010 && f.actions.contains("controller(")));
        assert!(flows.iter().filter(|f| f.priority == 1000).all(|f| f.actions == "drop"), "{flows:#?}");
        assert!(self.activation_flows("hv1").is_empty(), "hv1 is the main chassis: no activation flows");

        let dropped = self.drop_counter(65);
        assert_eq!(self.arp_to_vm(), (1, 0), "before activation, traffic to vm reaches only the source");
        until("hv2 drops the copy for vm (table 65 activation flow counts it)", || {
            (self.drop_counter(65) > dropped).then_some(())
        });
        let dropped = self.drop_counter(0);
        assert_eq!(self.arp_from_vm("hv2"), 0, "before activation, vm@hv2 cannot send");
        until("hv2 drops what vm@hv2 sends (table 0 activation flow counts it)", || {
            (self.drop_counter(0) > dropped).then_some(())
        });
        assert_eq!(self.arp_from_vm("hv1"), 1, "vm@hv1 still sends");
    }

    /// RARP from the VM on hv2, as QEMU sends when it resumes there: hv2 activated.
    fn activate(&self) -> PortBinding {
        self.hv("hv2").inject("vm", &rarp_frame(VM_MAC).expect("rarp")).unwrap_or_else(|e| panic!("{e:#}"));
        let pb = self.pb("ovn-controller on hv2 reports the activation", |pb| {
            pb.option("additional-chassis-activated") == Some("hv2")
        });
        assert_eq!(
            (pb.chassis.as_deref(), pb.additional_chassis.as_slice()),
            (Some("hv1"), &["hv2".to_string()][..])
        );
        self.settle();
        until("activation flows gone from hv2", || self.activation_flows("hv2").is_empty().then_some(()));
        pb
    }

    /// The port is back on hv1 alone, and hv2 neither blocks nor receives.
    fn assert_back_on_source(&self) {
        let pb = self.pb("back on hv1 alone and up", |pb| {
            pb.chassis.as_deref() == Some("hv1")
                && pb.additional_chassis.is_empty()
                && pb.requested_additional_chassis.is_empty()
                && pb.up == Some(true)
        });
        assert_eq!(pb.requested_chassis.as_deref(), Some("hv1"));
        assert_eq!(pb.option("requested-chassis"), Some("hv1"), "{pb:#?}");
        assert_eq!(pb.option("activation-strategy"), None, "{pb:#?}");
        self.settle();
        assert!(self.activation_flows("hv2").is_empty(), "{:#?}", self.activation_flows("hv2"));
        assert_eq!(self.arp_to_vm(), (1, 0), "traffic to vm reaches hv1 only");
    }
}

#[test]
fn migration_start_activate_succeed() {
    let w = World::start();

    // start: the CMS tags the destination; the proxy writes requested-chassis=hv1,hv2 + rarp
    w.start_migration();
    w.assert_destination_blocked();

    // the VM resumes on hv2 and announces itself
    w.activate();
    assert_eq!(w.arp_to_vm(), (1, 1), "after activation, traffic to vm reaches both copies");
    assert_eq!(w.arp_from_vm("hv2"), 1, "after activation, vm@hv2 sends");

    // success: the proxy writes requested-chassis=hv2, no strategy
    w.tag("migration-phase", "succeeded");
    let pb = w.pb("hv2 alone and up", |pb| {
        pb.chassis.as_deref() == Some("hv2")
            && pb.additional_chassis.is_empty()
            && pb.requested_additional_chassis.is_empty()
            && pb.up == Some(true)
    });
    assert_eq!(pb.requested_chassis.as_deref(), Some("hv2"));
    assert_eq!(pb.option("requested-chassis"), Some("hv2"), "{pb:#?}");
    assert_eq!(pb.option("activation-strategy"), None, "{pb:#?}");
    assert_eq!(pb.option("additional-chassis-activated"), None, "northd drops the flag: {pb:#?}");
    w.settle();
    assert!(w.activation_flows("hv2").is_empty());
    assert_eq!(w.arp_to_vm(), (0, 1), "after success the source VIF gets nothing");
    assert_eq!(w.arp_from_vm("hv2"), 1);

    // the proxy's SB-aware timeline saw every stage, in order
    let show = until("the timeline reaches single-chassis", || {
        w.proxy.appctl(&["migrations/show", "vm"]).ok().filter(|s| s.contains("single-chassis"))
    });
    eprintln!("{show}");
    let stages =
        ["tagged", "destination-requested", "destination-bound", "activated", "succeeded", "single-chassis"];
    let positions: Vec<usize> = stages
        .iter()
        .map(|st| show.find(&format!(" {st} ")).unwrap_or_else(|| panic!("{st} missing:\n{show}")))
        .collect();
    assert!(positions.windows(2).all(|p| p[0] < p[1]), "stages out of order:\n{show}");
    let list = w.proxy.appctl(&["migrations/list"]).expect("list");
    let cols: Vec<&str> =
        list.lines().find(|l| l.starts_with("vm ")).expect("vm line").split_whitespace().collect();
    assert_eq!(&cols[..5], ["vm", "hv1", "hv2", "succeeded", "single-chassis"], "{list}");
    let metrics = w.proxy.appctl(&["metrics/show"]).expect("metrics");
    assert!(metrics.contains("ovn_nb_proxy_migration_duration_seconds_count 1"), "{metrics}");
}

#[test]
fn finalize_on_activation_ends_the_migration_without_the_cms() {
    let w = World::start_with(&["--finalize-on-activation"]);
    w.start_migration();
    w.assert_destination_blocked();
    // The RARP activates hv2: the proxy finishes the migration itself, no phase tag written.
    w.hv("hv2").inject("vm", &rarp_frame(VM_MAC).expect("rarp")).unwrap_or_else(|e| panic!("{e:#}"));
    let pb = w.pb("hv2 alone and up, finalized by the proxy", |pb| {
        pb.chassis.as_deref() == Some("hv2") && pb.additional_chassis.is_empty() && pb.up == Some(true)
    });
    assert_eq!(pb.option("requested-chassis"), Some("hv2"), "{pb:#?}");
    assert_eq!(pb.option("activation-strategy"), None, "{pb:#?}");
    let ids = w.lab.nbctl(&["get", "Logical_Switch_Port", "vm", "external_ids"]).expect("ids");
    assert!(!ids.contains("migration-phase"), "the CMS wrote no phase: {ids}");
    w.settle();
    assert_eq!(w.arp_to_vm(), (0, 1), "duplicated delivery ended at activation");
    // A writer that knows nothing of it cannot bring the two-chassis binding back.
    w.cms(&["lsp-set-options", "vm", "requested-chassis=hv1,hv2", "activation-strategy=rarp"]);
    let opts = w.lab.nbctl(&["get", "Logical_Switch_Port", "vm", "options"]).expect("options");
    assert_eq!(opts.trim(), "{requested-chassis=hv2}");
    let show = w.proxy.appctl(&["migrations/show", "vm"]).expect("show");
    assert!(show.contains("activated") && show.contains("finalized-by-proxy"), "{show}");
    until("single chassis in the timeline", || {
        w.proxy.appctl(&["migrations/show", "vm"]).ok().filter(|s| s.contains("single-chassis"))
    });
    // The CMS's own verdict still lands and agrees.
    w.tag("migration-phase", "succeeded");
    let opts = w.lab.nbctl(&["get", "Logical_Switch_Port", "vm", "options"]).expect("options");
    assert_eq!(opts.trim(), "{requested-chassis=hv2}");
}

/// With finalize on activation, a second migration of the port to the destination of the one
/// the proxy finalized (a retry after a rollback) is a new migration: the CMS's tagging write
/// gets `src,dst` + rarp, not the finalized `dst` (which used to move the binding to the
/// destination long before the VM).
#[test]
fn finalize_does_not_misfire_on_a_second_migration_to_the_same_destination() {
    let w = World::start_with(&["--finalize-on-activation"]);
    w.start_migration();
    w.hv("hv2").inject("vm", &rarp_frame(VM_MAC).expect("rarp")).unwrap_or_else(|e| panic!("{e:#}"));
    until("finalized by the proxy", || (w.options() == "{requested-chassis=hv2}").then_some(()));
    // The audit line follows the server's answer, which may come after the row is readable.
    until("the finalize audited", || {
        let fin = w.proxy.audits("vm");
        fin.last()
            .is_some_and(|l| l.contains("reconcile port=vm ") && l.contains("cause=finalized"))
            .then_some(())
    });
    // The CMS rolls back after all, then tries again to the same destination.
    w.tag("migration-phase", "failed");
    assert_eq!(w.options(), "{requested-chassis=hv1}");
    w.pb("back on hv1 alone", |pb| pb.chassis.as_deref() == Some("hv1") && pb.additional_chassis.is_empty());
    w.untag(&["migration-phase"]);
    // Read right after the CMS's write returned.
    assert_eq!(w.options(), "{activation-strategy=rarp, requested-chassis=\"hv1,hv2\"}");
    let last = w.proxy.audits("vm").last().cloned().unwrap_or_default();
    assert!(last.contains("rewrite port=vm ") && last.contains("cause=started"), "{last}");
    let pb = w.pb("northd: hv2 requested as the additional chassis again", |pb| {
        pb.requested_chassis.as_deref() == Some("hv1") && pb.requested_additional_chassis == ["hv2"]
    });
    assert_eq!(pb.chassis.as_deref(), Some("hv1"), "the binding stays on the source: {pb:#?}");
}

/// A migration without a source tag whose options an unaware writer replaced while the proxy
/// was down: with `--sb-db`, the proxy finds the source in the Southbound binding (the chassis
/// other than the destination that binds the port) and puts the pin back.
#[test]
fn a_source_lost_while_the_proxy_was_down_is_recovered_from_the_southbound() {
    let mut w = World::start();
    w.start_migration();
    w.restart_proxy(|w| {
        w.lab.nbctl(&["lsp-set-options", "vm", "foo=bar"]).expect("unaware write around the proxy");
    });
    until("the pin is back", || {
        (w.options() == "{activation-strategy=rarp, foo=bar, requested-chassis=\"hv1,hv2\"}").then_some(())
    });
    let line = w.proxy.wait_log("source recovered from the Southbound", DEADLINE);
    assert!(line.contains("port=vm") && line.contains("hv1"), "{line}");
    w.pb("bound on hv1 with hv2 as the additional chassis", |pb| {
        pb.chassis.as_deref() == Some("hv1") && pb.additional_chassis == ["hv2"]
    });
}

#[test]
fn failure_and_abort_before_the_rarp_return_to_the_source() {
    let w = World::start();
    let pids = w.lab.pids();

    // failure reported before the VM ever ran on hv2
    w.start_migration();
    w.assert_destination_blocked();
    w.tag("migration-phase", "failed");
    w.assert_back_on_source();
    // the CMS cleans up: target VIF gone, tags gone; nothing changes for the port
    w.unplug("hv2", "vm");
    w.untag(&["migration-destination", "migration-phase"]);
    w.assert_back_on_source();

    // abort: the destination tag is simply removed
    w.start_migration();
    assert_eq!(w.arp_to_vm(), (1, 0));
    w.untag(&["migration-destination"]);
    w.assert_back_on_source();

    // the lab stops every process it started
    drop(w);
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still there after drop");
    }
}

#[test]
fn source_vif_lost_before_success_is_fixed_by_the_succeeded_tag() {
    let w = World::start();
    w.start_migration();
    w.activate();

    // the source QEMU goes away before the CMS reports the outcome
    w.unplug("hv1", "vm");
    let pb = w.pb("no main chassis once the source VIF is gone", |pb| {
        pb.chassis.is_none() && pb.additional_chassis == ["hv2"]
    });
    eprintln!("source VIF gone, migration not yet reported: {pb:#?}");
    assert_eq!(pb.up, Some(false), "the port is reported down: {pb:#?}");
    assert_eq!(pb.option("additional-chassis-activated"), Some("hv2"));
    w.settle();
    let (_, at_hv2) = w.arp_to_vm();
    eprintln!("traffic to vm in that state: {at_hv2} of 1 frame reached vm@hv2");

    // the fix: the CMS reports success, the proxy moves requested-chassis to hv2
    w.tag("migration-phase", "succeeded");
    let pb = w.pb("hv2 main and up", |pb| {
        pb.chassis.as_deref() == Some("hv2") && pb.additional_chassis.is_empty() && pb.up == Some(true)
    });
    assert_eq!(pb.option("requested-chassis"), Some("hv2"), "{pb:#?}");
    w.settle();
    assert_eq!(w.arp_to_vm(), (0, 1), "traffic to vm reaches hv2");
    assert_eq!(w.arp_from_vm("hv2"), 1);
}

// ---------------------------------------------------------------------------------------------
// timeline (measurement only, not a timed assertion)

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// One `transact` over a persistent JSON-RPC connection (no process start in the measurement).
fn transact(conn: &mut Raw, id: u64, ops: Value) {
    let mut params = vec![json!("OVN_Northbound")];
    params.extend(ops.as_array().cloned().unwrap_or_default());
    let req = json!({"id": id, "method": "transact", "params": params});
    conn.send(req.to_string().as_bytes());
    loop {
        let msg = conn.recv();
        if msg["method"] == "echo" {
            let reply = json!({"id": msg["id"], "result": msg["params"], "error": null});
            conn.send(reply.to_string().as_bytes());
            continue;
        }
        if msg["id"] == id {
            let results = msg["result"].as_array().cloned().unwrap_or_default();
            assert!(
                msg["error"].is_null() && results.iter().all(|r| r.get("error").is_none()),
                "transact failed: {msg}"
            );
            return;
        }
    }
}

fn mutate_vm(column: &str, op: &str, value: Value) -> Value {
    json!({"op": "mutate", "table": "Logical_Switch_Port", "where": [["name", "==", "vm"]],
        "mutations": [[column, op, value]]})
}

fn map(pairs: &[(&str, &str)]) -> Value {
    json!(["map", pairs.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()])
}

fn keys(keys: &[&str]) -> Value {
    json!(["set", keys])
}

/// The three writes of a migration, either as the CMS's tags through the proxy or as the
/// options written straight to NB.
#[derive(Clone, Copy, PartialEq)]
enum Writer {
    Proxy,
    Direct,
}

impl Writer {
    fn start(self) -> Value {
        match self {
            Writer::Proxy => {
                json!([mutate_vm("external_ids", "insert", map(&[("migration-destination", "hv2")]))])
            }
            Writer::Direct => json!([
                mutate_vm("options", "delete", keys(&["requested-chassis", "activation-strategy"])),
                mutate_vm(
                    "options",
                    "insert",
                    map(&[("requested-chassis", "hv1,hv2"), ("activation-strategy", "rarp")])
                ),
            ]),
        }
    }

    fn succeed(self) -> Value {
        match self {
            Writer::Proxy => {
                json!([mutate_vm("external_ids", "insert", map(&[("migration-phase", "succeeded")]))])
            }
            Writer::Direct => json!([
                mutate_vm("options", "delete", keys(&["requested-chassis", "activation-strategy"])),
                mutate_vm("options", "insert", map(&[("requested-chassis", "hv2")])),
            ]),
        }
    }
}

/// Back to "vm on hv1, no migration" (not measured): tags off, requested-chassis=hv1.
fn reset(conn: &mut Raw, id: u64) {
    transact(
        conn,
        id,
        json!([
            mutate_vm("external_ids", "delete", keys(&["migration-destination", "migration-phase"])),
            mutate_vm("options", "delete", keys(&["requested-chassis", "activation-strategy"])),
            mutate_vm("options", "insert", map(&[("requested-chassis", "hv1")])),
        ]),
    );
}

/// Milliseconds of: write → its NB reply, write → SB requested_additional_chassis, write →
/// additional_chassis bound, RARP → activated, phase write → single chassis.
fn one_run(w: &World, watch: &SbWatch, conn: &mut Raw, writer: Writer, id: u64) -> [f64; 5] {
    let t0 = Instant::now();
    transact(conn, id, writer.start());
    let t_reply = Instant::now();
    let (t_req, _) = watch
        .first_since("vm", t0, DEADLINE, |pb| pb.requested_additional_chassis == ["hv2"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (t_bound, _) = watch
        .first_since("vm", t0, DEADLINE, |pb| {
            pb.chassis.as_deref() == Some("hv1") && pb.additional_chassis == ["hv2"]
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    w.settle();
    let t1 = Instant::now();
    w.hv("hv2").inject("vm", &rarp_frame(VM_MAC).expect("rarp")).unwrap_or_else(|e| panic!("{e:#}"));
    let (t_act, _) = watch
        .first_since("vm", t1, DEADLINE, |pb| pb.option("additional-chassis-activated") == Some("hv2"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let t2 = Instant::now();
    transact(conn, id + 1, writer.succeed());
    let (t_single, _) = watch
        .first_since("vm", t2, DEADLINE, |pb| {
            pb.chassis.as_deref() == Some("hv2") && pb.additional_chassis.is_empty()
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    [ms(t0, t_reply), ms(t0, t_req), ms(t0, t_bound), ms(t1, t_act), ms(t2, t_single)]
}

/// Not a timed assertion: prints the medians of each stage of start → activate → succeed, with
/// the CMS writing tags through the proxy and, for comparison, options straight to NB (both over
/// a persistent JSON-RPC connection, so no process start is measured), interleaved. SB changes are
/// timed on arrival over an SB monitor. Fails only if a stage is not reached.
#[test]
#[ignore = "measurement, prints medians; run with --ignored --nocapture"]
fn timeline_medians() {
    const RUNS: usize = 5;
    let w = World::start();
    w.plug("hv2", "vm");
    let watch = w.lab.watch_sb().unwrap_or_else(|e| panic!("{e:#}"));
    let nb_sock = w.lab.nb_remote().trim_start_matches("unix:").to_string();
    let mut via_proxy = Raw::connect(&w.proxy.unix);
    let mut direct = Raw::connect(Path::new(&nb_sock));
    let mut results: Vec<(&str, Vec<[f64; 5]>)> =
        vec![("proxy, CMS writes tags", vec![]), ("direct, CMS writes options", vec![])];
    let mut id = 100;
    for _ in 0..RUNS {
        // interleaved, so background noise on the shared machine spreads over both
        for (k, (writer, conn)) in
            [(Writer::Proxy, &mut via_proxy), (Writer::Direct, &mut direct)].into_iter().enumerate()
        {
            reset(conn, id);
            w.pb("reset: vm on hv1 alone", |pb| {
                pb.chassis.as_deref() == Some("hv1")
                    && pb.additional_chassis.is_empty()
                    && pb.requested_additional_chassis.is_empty()
                    && pb.option("additional-chassis-activated").is_none()
            });
            w.settle();
            results[k].1.push(one_run(&w, &watch, conn, writer, id + 1));
            id += 10;
        }
    }
    let stages = [
        "start write → its NB transact reply",
        "write → SB requested_additional_chassis=[hv2]",
        "write → SB additional_chassis=[hv2] bound",
        "RARP injected → additional-chassis-activated",
        "phase write → SB chassis=hv2 alone",
    ];
    for (label, runs) in &results {
        eprintln!("{label} ({RUNS} runs, ms):");
        for (i, stage) in stages.iter().enumerate() {
            let v: Vec<f64> = runs.iter().map(|r| r[i]).collect();
            let all: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
            eprintln!("  {stage:<48} median {:6.1}   runs: {}", median(v.clone()), all.join(" "));
        }
    }
}
