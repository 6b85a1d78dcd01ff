//! `ovn-nb-proxy demo`: the README's main job.
//!
//! Starts a throw-away NB `ovsdb-server` in a temp dir and the proxy in front of it, then walks
//! ports through live migrations with `ovn-nbctl` writing only tags through the proxy, printing
//! after each step the options the database holds (read directly, not through the proxy).
//! Everything started is stopped on exit, Ctrl-C included.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::netlab::qemu;
use crate::netlab::run::{reset, run_once, Arm, Cms, Measured};
use crate::netlab::PacketLab;
use crate::ovn::{rarp_frame, Hypervisor, OvnLab, PortBinding};
use crate::sandbox::{self, NbServer};
use ovn_nb_proxy::net::remote::{parse_upstreams, Active, Passive};
use ovn_nb_proxy::proxy::{Config, Proxy, Shared};

pub async fn run(shutdown: CancellationToken) -> Result<()> {
    tokio::select! {
        r = walk_through() => r,
        _ = shutdown.cancelled() => {
            println!("\ninterrupted: stopping the database and the proxy");
            Ok(())
        }
    }
}

/// Runs a blocking tool call off the async workers (the proxy serves on them meanwhile).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

struct Demo {
    proxy_db: String,
    direct_db: String,
}

impl Demo {
    /// Prints and runs `ovn-nbctl` through the proxy.
    async fn nbctl(&self, args: &[&str]) -> Result<()> {
        self.nbctl_at(&self.proxy_db.clone(), args).await
    }

    async fn nbctl_at(&self, db: &str, args: &[&str]) -> Result<()> {
        println!("$ ovn-nbctl --db={db} {}", shell_words(args));
        let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let db = db.to_string();
        let out = blocking(move || {
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            sandbox::ovn_nbctl(&db, &refs)
        })
        .await?;
        print!("{out}");
        Ok(())
    }

    /// The port's options as the database holds them.
    async fn options(&self, port: &str) -> Result<String> {
        let (db, port) = (self.direct_db.clone(), port.to_string());
        blocking(move || sandbox::ovn_nbctl(&db, &["get", "Logical_Switch_Port", &port, "options"]))
            .await
            .map(|s| s.trim().to_string())
    }

    async fn show_options(&self, port: &str) -> Result<()> {
        println!("  → database: {port} options = {}\n", self.options(port).await?);
        Ok(())
    }
}

async fn walk_through() -> Result<()> {
    let dir =
        tempfile::Builder::new().prefix("ovn-nb-proxy-demo.").tempdir().context("creating a temp dir")?;
    one_database(dir.path()).await?;
    let have_ovn = ["ovn-northd", "ovn-controller", "ovs-vswitchd", "ovs-vsctl"]
        .iter()
        .all(|t| sandbox::require(t).is_ok());
    if have_ovn {
        two_hypervisors(dir.path()).await?;
        real_packets(dir.path()).await?;
    } else {
        println!(
            "\n(ovn-northd / ovn-controller / ovs-vswitchd not installed: skipping the two-hypervisor part;"
        );
        println!(" tools/setup.sh installs them)");
    }
    println!("\n• done: stopping everything and removing {}", dir.path().display());
    Ok(())
}

/// Part one: one NB database and the proxy in front of it; the ports' stories, what the
/// database holds at the end, what the proxy counted. Both are stopped on return.
async fn one_database(dir: &Path) -> Result<()> {
    let nb = {
        let d = dir.to_path_buf();
        blocking(move || NbServer::start(&d)).await?
    };
    println!("• NB database: ovsdb-server (pid {}) on unix:{}", nb.pid(), nb.socket().display());

    let proxy_sock = dir.join("proxy.sock");
    let cfg = Config::new(vec![Active::Unix(nb.socket())], vec![Passive::Unix(proxy_sock.clone())]);
    let proxy = Proxy::bind(cfg).await?;
    let shared = proxy.shared();
    let demo = Demo { proxy_db: format!("unix:{}", proxy_sock.display()), direct_db: nb.unix_remote() };
    println!("• proxy: listening on {}, upstream {}", demo.proxy_db, demo.direct_db);
    let stop = CancellationToken::new();
    let serving = tokio::spawn(proxy.serve(stop.clone()));
    wait_synced(&shared).await?;

    demo.migrations().await?;
    demo.reconciled().await?;
    demo.dump().await?;
    print_metrics(&shared);
    stop.cancel();
    let _ = serving.await;
    drop(nb);
    Ok(())
}

impl Demo {
    /// A port that migrates and succeeds (a writer meanwhile knowing nothing of it), one that
    /// fails.
    async fn migrations(&self) -> Result<()> {
        println!("\n== A VM port running on hv1 ==");
        self.nbctl(&["init"]).await?;
        self.nbctl(&["ls-add", "sw0"]).await?;
        self.nbctl(&["lsp-add", "sw0", "vm1"]).await?;
        self.nbctl(&["lsp-set-addresses", "vm1", "00:00:00:00:00:01 10.0.0.11"]).await?;
        self.nbctl(&["lsp-set-options", "vm1", "requested-chassis=hv1"]).await?;
        self.show_options("vm1").await?;

        println!("== The CMS tags the port as migrating to hv2 (tags only: the proxy writes the options) ==");
        self.nbctl(&["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"]).await?;
        self.show_options("vm1").await?;

        println!("== A writer that knows nothing of migration replaces the options ==");
        self.nbctl(&["lsp-set-options", "vm1", "requested-chassis=hv1", "mcast_flood=true"]).await?;
        self.show_options("vm1").await?;

        println!("== The migration succeeds ==");
        self.nbctl(&["set", "Logical_Switch_Port", "vm1", "external_ids:migration-phase=Succeeded"]).await?;
        self.show_options("vm1").await?;

        println!("== A second port migrates to hv3 and fails ==");
        self.nbctl(&["lsp-add", "sw0", "vm2", "--", "lsp-set-options", "vm2", "requested-chassis=hv1"])
            .await?;
        self.nbctl(&["set", "Logical_Switch_Port", "vm2", "external_ids:migration-destination=hv3"]).await?;
        self.show_options("vm2").await?;
        self.nbctl(&["set", "Logical_Switch_Port", "vm2", "external_ids:migration-phase=Failed"]).await?;
        self.show_options("vm2").await
    }

    /// A port tagged behind the proxy's back, fixed by its reconciler.
    async fn reconciled(&self) -> Result<()> {
        println!("== A third port is tagged by a writer that bypasses the proxy: the reconciler fixes it ==");
        self.nbctl(&["lsp-add", "sw0", "vm3", "--", "lsp-set-options", "vm3", "requested-chassis=hv1"])
            .await?;
        let t0 = Instant::now();
        self.nbctl_at(
            &self.direct_db.clone(),
            &["set", "Logical_Switch_Port", "vm3", "external_ids:migration-destination=hv2"],
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.options("vm3").await?.contains("rarp") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!("  (reconciled within {} ms)", t0.elapsed().as_millis());
        self.show_options("vm3").await
    }

    /// The port table as the database holds it.
    async fn dump(&self) -> Result<()> {
        println!("== What the database holds now (read directly, not through the proxy) ==");
        let direct = self.direct_db.clone();
        let dump = blocking(move || {
            sandbox::run_tool(
                "ovsdb-client",
                &[
                    "dump",
                    &direct,
                    "OVN_Northbound",
                    "Logical_Switch_Port",
                    "name",
                    "options",
                    "external_ids",
                ],
            )
        })
        .await?;
        print!("{dump}");
        Ok(())
    }
}

/// The proxy's counters that are not zero.
fn print_metrics(shared: &Shared) {
    println!("\n== What the proxy counted ==");
    let text = shared.encode_metrics();
    let interesting = |l: &&str| {
        !l.starts_with('#') && !l.contains("_bucket") && !l.ends_with(" 0") && !l.ends_with(" 0.0")
    };
    for line in text.lines().filter(interesting) {
        println!("  {line}");
    }
}

/// Part two: real OVN. ovn-northd and two simulated hypervisors (ovn-controller on the dummy
/// datapath); the CMS writes only tags through the proxy; the proxy watches the Southbound and
/// prints the migration's timeline.
async fn two_hypervisors(dir: &Path) -> Result<()> {
    println!("\n== Real OVN: ovn-northd and two hypervisors (hv1, hv2) on the dummy datapath ==");
    let lab_dir = dir.join("lab");
    std::fs::create_dir_all(&lab_dir)?;
    let lab = blocking(move || OvnLab::start(&lab_dir, &["hv1", "hv2"])).await?;
    let proxy_sock = dir.join("proxy-lab.sock");
    let (shared, stop, serving) = serve_watching_sb(&lab.nb_remote(), &lab.sb_remote(), &proxy_sock).await?;
    let demo = Demo { proxy_db: format!("unix:{}", proxy_sock.display()), direct_db: lab.nb_remote() };
    println!("• NB {}  SB {}  proxy {} (watching the SB)", lab.nb_remote(), lab.sb_remote(), demo.proxy_db);
    wait_synced(&shared).await?;

    let part = LabDemo { demo, lab: Arc::new(lab) };
    part.vm_on_hv1().await?;
    part.migrate().await?;
    print_timeline(&shared).await;
    stop.cancel();
    let _ = serving.await;
    Ok(())
}

/// Part two's handles: `ovn-nbctl` through the proxy, and the lab behind it.
struct LabDemo {
    demo: Demo,
    lab: Arc<OvnLab>,
}

impl LabDemo {
    /// Prints the SB binding of `vm`, at step `what`.
    async fn binding(&self, what: &str) -> Result<PortBinding> {
        let lab = self.lab.clone();
        let pb = blocking(move || lab.port_binding("vm")).await?;
        println!(
            "  → SB Port_Binding vm [{what}]: chassis={} additional={:?} requested={} requested-additional={:?} activated={} up={}",
            pb.chassis.as_deref().unwrap_or("-"),
            pb.additional_chassis,
            pb.requested_chassis.as_deref().unwrap_or("-"),
            pb.requested_additional_chassis,
            pb.options.get("additional-chassis-activated").map(String::as_str).unwrap_or("-"),
            pb.up.map(|u| u.to_string()).unwrap_or_else(|| "-".into())
        );
        Ok(pb)
    }

    /// Runs `f` on hypervisor `hv`, off the async workers.
    async fn hv_do(&self, hv: &'static str, f: fn(&Hypervisor) -> Result<()>) -> Result<()> {
        let lab = self.lab.clone();
        blocking(move || f(lab.hv(hv)?)).await
    }

    /// Waits (10 s at most) until the SB binding of `vm` satisfies `pred`.
    async fn wait_for(&self, what: &str, pred: fn(&PortBinding) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lab = self.lab.clone();
            let pb = blocking(move || lab.port_binding("vm")).await?;
            if pred(&pb) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not within 10 s: {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn vm_on_hv1(&self) -> Result<()> {
        println!("\n== The VM runs on hv1 ==");
        self.demo
            .nbctl(&[
                "ls-add",
                "ls0",
                "--",
                "lsp-add",
                "ls0",
                "vm",
                "--",
                "lsp-set-addresses",
                "vm",
                "00:00:00:00:00:10 10.0.0.10",
            ])
            .await?;
        self.demo.nbctl(&["lsp-set-options", "vm", "requested-chassis=hv1"]).await?;
        println!("$ (hv1) ovs-vsctl add-port br-int vm -- set Interface vm external_ids:iface-id=vm");
        self.hv_do("hv1", |h| h.add_vif("vm", "vm")).await?;
        self.wait_for("vm bound on hv1", |pb| pb.chassis.as_deref() == Some("hv1") && pb.up == Some(true))
            .await?;
        self.binding("running on hv1").await.map(drop)
    }

    /// The migration to hv2: tagged, the destination bound, the RARP, the CMS's success.
    async fn migrate(&self) -> Result<()> {
        println!("\n== The CMS tags the migration to hv2; the target's VIF appears there ==");
        self.demo
            .nbctl(&["set", "Logical_Switch_Port", "vm", "external_ids:migration-destination=hv2"])
            .await?;
        self.demo.show_options("vm").await?;
        println!("$ (hv2) ovs-vsctl add-port br-int vm -- set Interface vm external_ids:iface-id=vm");
        self.hv_do("hv2", |h| h.add_vif("vm", "vm")).await?;
        self.wait_for("hv2 bound as additional", |pb| pb.additional_chassis == ["hv2"]).await?;
        self.binding("both bound, hv2 blocked until the RARP").await?;

        println!("\n== The VM resumes on hv2 and sends its RARP ==");
        println!("$ (hv2) ovs-appctl netdev-dummy/receive vm <RARP from 00:00:00:00:00:10>");
        self.hv_do("hv2", |h| h.inject("vm", &rarp_frame("00:00:00:00:00:10")?)).await?;
        self.wait_for("hv2 activated", |pb| {
            pb.options.get("additional-chassis-activated").is_some_and(|a| a == "hv2")
        })
        .await?;
        self.binding("hv2 activated").await?;

        println!("\n== The CMS reports success ==");
        self.demo
            .nbctl(&["set", "Logical_Switch_Port", "vm", "external_ids:migration-phase=succeeded"])
            .await?;
        self.demo.show_options("vm").await?;
        self.wait_for("hv2 alone", |pb| {
            pb.chassis.as_deref() == Some("hv2") && pb.additional_chassis.is_empty()
        })
        .await?;
        self.binding("hv2 alone").await.map(drop)
    }
}

/// The proxy's timeline of `vm`, once it has seen the port on one chassis (5 s at most).
async fn print_timeline(shared: &Shared) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared.timelines.get("vm").is_none_or(|m| m.sb_state() != "single-chassis")
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("\n== The proxy's timeline (ovs-appctl migrations/show vm) ==");
    print!("{}", shared.timelines.render_show("vm").unwrap_or_default());
}

/// Part three: real packets. Chassis in network namespaces on the OVS userspace datapath, a VM
/// (a namespace whose TCP socket survives the move) migrating hv1 → hv2 while a peer streams TCP
/// to it and probes it every 2 ms: once with the CMS writing tags through the proxy, once as a
/// CMS without migration support would (`requested-chassis=hv2` a second after the VM resumed);
/// with a QEMU guest too when QEMU is installed.
async fn real_packets(dir: &Path) -> Result<()> {
    println!("\n== Real packets: a TCP stream to a VM that live-migrates hv1 → hv2 ==");
    let lab_dir = dir.join("packets");
    std::fs::create_dir_all(&lab_dir)?;
    let started = {
        let d = lab_dir.clone();
        blocking(move || {
            let mut lab = PacketLab::start(&d, 2, "hv1")?;
            lab.namespace_vm()?;
            Ok(lab)
        })
        .await
    };
    let lab = match started {
        Ok(lab) => lab,
        Err(e) => {
            println!("(skipped: the real-packet lab needs root and network namespaces: {e:#})");
            return Ok(());
        }
    };
    let proxy_sock = dir.join("proxy-packets.sock");
    let (shared, stop, serving) = serve_watching_sb(&lab.nb_remote(), &lab.sb_remote(), &proxy_sock).await?;
    wait_synced(&shared).await?;
    println!(
        "• 2 chassis in network namespaces (ovs-vswitchd on the userspace datapath, Geneve between them); \
         the VM pre-plugged on both, as libvirt does; the peer on hv1 sends a TCP record every 1 ms \
         (echoed by the VM) and a UDP probe every 2 ms"
    );
    let lab = Arc::new(Mutex::new(lab));
    namespace_vm(&lab, &proxy_sock).await?;
    qemu_guest(&lab, &proxy_sock, &lab_dir).await?;
    stop.cancel();
    let _ = serving.await;
    Ok(())
}

/// The namespace VM migrated twice: the CMS writing tags through the proxy, then a CMS without
/// migration support.
async fn namespace_vm(lab: &Arc<Mutex<PacketLab>>, proxy_sock: &Path) -> Result<()> {
    let arms = [
        (Arm::Proxy, "the CMS writes only tags, through the proxy"),
        (Arm::Naive(1000), "a CMS without migration support: requested-chassis=hv2 1 s after the VM resumed"),
    ];
    for (arm, what) in arms {
        let (l, sock) = (lab.clone(), proxy_sock.to_path_buf());
        let m = blocking(move || {
            let mut lab = l.lock().map_err(|_| anyhow::anyhow!("lab lock"))?;
            let nb = lab.nb_socket();
            reset(&mut lab)?;
            run_once(&mut lab, arm, &Cms { proxy: &sock, nb: &nb })
        })
        .await?;
        say(what, &m);
    }
    Ok(())
}

/// A QEMU guest live-migrated by QEMU, when QEMU is installed.
async fn qemu_guest(lab: &Arc<Mutex<PacketLab>>, proxy_sock: &Path, lab_dir: &Path) -> Result<()> {
    let have_qemu = sandbox::require("qemu-system-x86_64").is_ok() && Path::new("/bin/busybox").is_file();
    if !have_qemu {
        println!("  (QEMU not installed: tools/dataplane.sh qemu installs it and runs the real guest)");
        return Ok(());
    }
    let (l, sock, d) = (lab.clone(), proxy_sock.to_path_buf(), lab_dir.to_path_buf());
    let m = blocking(move || {
        let guest = qemu::prepare(&d)?;
        let mut lab = l.lock().map_err(|_| anyhow::anyhow!("lab lock"))?;
        let nb = lab.nb_socket();
        qemu::run_once(&mut lab, &guest, Arm::Proxy, &Cms { proxy: &sock, nb: &nb })
    })
    .await;
    match m {
        Ok(m) => say("a QEMU guest live-migrated by QEMU, the CMS writing tags through the proxy", &m),
        Err(e) => println!("  (the QEMU guest could not run here: {e:#})"),
    }
    Ok(())
}

/// What one run measured, in a sentence.
fn say(what: &str, m: &Measured) {
    let tcp = if m.tcp_survived {
        "the TCP stream survived (every record echoed, in order)".to_string()
    } else {
        format!("the TCP stream BROKE ({})", m.tcp_error.as_deref().unwrap_or("?"))
    };
    println!(
        "  {what}:\n    {tcp}; longest interruption {:.1} ms ({} probes lost), TCP stalled {:.1} ms at most{}",
        m.interruption_ms,
        m.lost,
        m.tcp_stall_ms,
        m.qemu_downtime_ms.map(|d| format!("; QEMU's downtime {d:.0} ms")).unwrap_or_default()
    );
}

/// A proxy in front of the NB remote `nb`, watching the SB remote `sb`, listening on `sock`;
/// served until the token is cancelled.
async fn serve_watching_sb(
    nb: &str,
    sb: &str,
    sock: &Path,
) -> Result<(Arc<Shared>, CancellationToken, tokio::task::JoinHandle<()>)> {
    let mut cfg = Config::new(parse_upstreams(nb)?, vec![Passive::Unix(sock.to_path_buf())]);
    cfg.sb = parse_upstreams(sb)?;
    let proxy = Proxy::bind(cfg).await?;
    let shared = proxy.shared();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(proxy.serve(stop.clone()));
    Ok((shared, stop, serving))
}

async fn wait_synced(shared: &Shared) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shared.cache.is_synced() {
        if Instant::now() > deadline {
            bail!("the proxy's port monitor did not synchronise within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| if a.contains(' ') { format!("\"{a}\"") } else { (*a).to_string() })
        .collect::<Vec<_>>()
        .join(" ")
}
