//! A real guest in the real-packet lab: QEMU (TCG: KVM does not work on these machines) with a
//! Debian kernel (`linux-image-amd64`) and an initramfs built here from `busybox-static` and the
//! kernel's virtio modules; its virtio-net NIC on a tap that QEMU creates in the chassis'
//! namespace, plugged into that chassis' `br-int`. It is live-migrated by QEMU itself: the
//! destination QEMU (in hv2's namespace, its tap pre-plugged there) waits with `-incoming` on a
//! unix socket, the source is told to `migrate` over QMP, and QEMU's own announce (RARP from the
//! guest's MAC) after the switchover is what OVN's `activation-strategy=rarp` waits for. The
//! guest answers ICMP (its kernel) and echoes TCP on port 5001 (`nc -ll -e cat`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::run::{longest_gap, Arm, Cms, Measured};
use super::{ip, no_offload, Helper, PacketLab, MTU, TCP_PORT, VM_IP, VM_MAC};
use crate::ovn::SbWatch;
use crate::sandbox;

/// The kernel modules virtio-net needs, in the order `insmod` takes them.
const MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// The guest's kernel and initramfs.
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The newest Debian kernel in /boot and its modules directory.
fn kernel() -> Result<(PathBuf, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir("/boot")
        .context("/boot")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ver = name.strip_prefix("vmlinuz-")?.to_string();
            Path::new("/lib/modules").join(&ver).is_dir().then_some((ver, e.path()))
        })
        .collect();
    found.sort();
    let (ver, path) = found.pop().ok_or_else(|| {
        anyhow!("no kernel in /boot with modules: install the Debian package linux-image-amd64")
    })?;
    Ok((path, Path::new("/lib/modules").join(ver)))
}

fn find_module(root: &Path, name: &str) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(f) = p.file_name().and_then(|f| f.to_str()) {
                if f == format!("{name}.ko") || f == format!("{name}.ko.xz") {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// Builds the initramfs in `dir`: busybox, the virtio-net modules, an `init` that brings up
/// `eth0` with the VM's address and starts the TCP echo.
pub fn prepare(dir: &Path) -> Result<Guest> {
    sandbox::require("qemu-system-x86_64")?;
    sandbox::require("cpio")
        .or_else(|_| bail!("cpio not found: install the Debian package cpio"))
        .map(drop)?;
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox not found: install the Debian package busybox-static");
    }
    let (kernel, modules) = kernel()?;
    let root = dir.join("initramfs");
    for d in ["bin", "lib/modules", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox")).context("copying busybox")?;
    for m in MODULES {
        let src = find_module(&modules, m)
            .ok_or_else(|| anyhow!("kernel module {m} not found under {}", modules.display()))?;
        let dst = root.join("lib/modules").join(format!("{m}.ko"));
        if src.extension().is_some_and(|e| e == "xz") {
            let out = Command::new("xz").arg("-dc").arg(&src).output().context("xz (package xz-utils)")?;
            if !out.status.success() {
                bail!("xz -dc {}: {}", src.display(), String::from_utf8_lossy(&out.stderr));
            }
            std::fs::write(&dst, out.stdout)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\nmount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\nfor m in {}; do insmod /lib/modules/$m.ko; done\nip link set lo up\n\
         ip link set eth0 mtu {MTU} up\nip addr add {VM_IP}/24 dev eth0\nnc -ll -p {TCP_PORT} -e cat &\n\
         echo GUEST-READY\nwhile true; do sleep 1000; done\n",
        MODULES.join(" ")
    );
    let init_path = root.join("init");
    std::fs::write(&init_path, init)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init_path, std::fs::Permissions::from_mode(0o755))?;
    let initrd = dir.join("initrd.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            root.display(),
            initrd.display()
        ))
        .status()?;
    if !status.success() {
        bail!("packing the initramfs failed");
    }
    Ok(Guest { kernel, initrd })
}

/// One QEMU process, in a chassis' namespace.
pub struct Qemu {
    child: Child,
    pub qmp: PathBuf,
    console: PathBuf,
    pub tap: String,
}

impl Qemu {
    /// Starts the guest on `tap` in `ns` (`incoming`: as a migration destination on that unix
    /// socket). QMP and the serial console go to files in `dir`.
    pub fn start(guest: &Guest, dir: &Path, ns: &str, tap: &str, incoming: Option<&Path>) -> Result<Qemu> {
        let qmp = dir.join(format!("{tap}.qmp"));
        let console = dir.join(format!("{tap}.console"));
        let _ = std::fs::remove_file(&qmp);
        let mut cmd = Command::new(sandbox::require("ip")?);
        cmd.args(["netns", "exec", ns, "qemu-system-x86_64", "-accel", "tcg", "-m", "128", "-smp", "1"])
            .args(["-nodefaults", "-no-reboot", "-display", "none", "-vga", "none"])
            .arg("-kernel")
            .arg(&guest.kernel)
            .arg("-initrd")
            .arg(&guest.initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .arg("-netdev")
            .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
            .arg("-device")
            // No offloads: the userspace datapath forwards what it reads (checksums included).
            .arg(format!(
                "virtio-net-pci,netdev=n0,mac={VM_MAC},csum=off,guest_csum=off,gso=off,host_tso4=off,host_tso6=off,\
                 guest_tso4=off,guest_tso6=off,host_ufo=off,guest_ufo=off,mrg_rxbuf=off"
            ))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        if let Some(sock) = incoming {
            cmd.arg("-incoming").arg(format!("unix:{}", sock.display()));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{tap}.stderr")))?)
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let mut q = Qemu { child, qmp, console, tap: tap.to_string() };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ip_link_exists(ns, tap) {
            if let Some(status) = q.child.try_wait()? {
                bail!("qemu exited at start ({status}); see {}", dir.join(format!("{tap}.stderr")).display());
            }
            if Instant::now() > deadline {
                bail!("qemu did not create its tap {tap} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ip(&["-n", ns, "link", "set", tap, "mtu", MTU, "up"])?;
        no_offload(ns, tap)?;
        Ok(q)
    }

    /// Waits until the guest's init says it is up.
    pub fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if std::fs::read_to_string(&self.console).unwrap_or_default().contains("GUEST-READY") {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("qemu exited ({status}) before the guest was up; console:\n{}", self.console_text());
            }
            if Instant::now() > deadline {
                bail!("the guest was not up within {within:?}; console:\n{}", self.console_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// A QMP session (capabilities negotiated).
    pub fn qmp(&self) -> Result<Qmp> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(&self.qmp) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(e).context("connecting to QMP"),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut q = Qmp { reader: BufReader::new(stream.try_clone()?), writer: stream };
        q.read()?; // the greeting
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ip_link_exists(ns: &str, dev: &str) -> bool {
    sandbox::run_tool("ip", &["-n", ns, "link", "show", dev]).is_ok()
}

/// QEMU's machine protocol: one JSON object per line.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("QMP closed");
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs a command; its `return` (events met on the way are skipped).
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value> {
        writeln!(self.writer, "{}", json!({"execute": cmd, "arguments": args}))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {cmd}: {e}");
            }
        }
    }
}

/// One QEMU live migration of the guest, hv1 → hv2, with `arm`; the guest booted fresh on hv1.
/// Timeline as for the namespace VM, the switchover being QEMU's own (stop-and-copy, then the
/// destination resumes and announces the guest).
pub fn run_once(lab: &mut PacketLab, guest: &Guest, arm: Arm, cms: &Cms) -> Result<Measured> {
    super::run::reset_options(lab)?;
    let (src, dst, mig) = boot_pair(lab, guest, arm)?;
    // The watch's first events are the bindings as they are when it starts.
    let since = Instant::now();
    let watch = lab.watch_sb()?;
    watch.first_since("vm", since, Duration::from_secs(20), |pb| {
        pb.chassis.as_deref() == Some("hv1") && pb.up == Some(true)
    })?;
    // The guest's announce, as it leaves its tap on hv2.
    let mut rarps = Helper::start(&lab.hv("hv2")?.ns, lab.helper_path(), &["sniff-rarp", "qtap-dst"])?;
    let (base_i, base_w) = (Instant::now(), super::run::wall(SystemTime::now()));
    let at = |i: Instant| base_w + i.saturating_duration_since(base_i).as_secs_f64();
    wait_answering(lab, &src, &watch)?;
    let traffic = lab.traffic_with(12.0, true)?;
    std::thread::sleep(Duration::from_millis(1500));
    let first_write = Instant::now();
    super::run::start_write(arm, cms)?;
    let mut first_write_to_bound = None;
    if !matches!(arm, Arm::Naive(_)) {
        let (t, _) = watch.first_since("vm", first_write, Duration::from_secs(10), |pb| {
            pb.additional_chassis.iter().any(|c| c == "hv2")
        })?;
        first_write_to_bound = Some(t.duration_since(first_write).as_secs_f64() * 1000.0);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (switch, downtime) = migrate(&src, &mig)?;
    super::run::after_switchover(lab, switch, "qtap-src", arm, cms)?;
    drop(src);
    let result = traffic.finish(Duration::from_secs(60))?;
    let rarp_at = rarps.first("rarp", Duration::from_secs(1)).ok().and_then(|v| v["rarp"].as_f64());
    drop(rarps);
    let (activated, final_at) =
        super::run::sb_milestones(&watch, rarp_at, switch - Duration::from_secs(1), switch, at);
    drop(dst);
    lab.hv("hv2")?.unplug("qtap-dst")?;
    Ok(Measured {
        rarp_to_activated_ms: activated,
        first_write_to_bound_ms: first_write_to_bound,
        switch_to_final_ms: final_at,
        qemu_downtime_ms: Some(downtime),
        ..traffic_figures(arm, &result, at(switch) - downtime / 1000.0, at(first_write))
    })
}

/// The source QEMU booted on hv1 behind `qtap-src`, the destination waiting on hv2 behind
/// `qtap-dst` (announcing the guest after the switchover only if `arm`'s VM does), and the
/// migration socket between them.
fn boot_pair(lab: &PacketLab, guest: &Guest, arm: Arm) -> Result<(Qemu, Qemu, PathBuf)> {
    let dir = lab.dir().join("qemu");
    std::fs::create_dir_all(&dir)?;
    let (hv1, hv2) = (lab.hv("hv1")?.ns.clone(), lab.hv("hv2")?.ns.clone());
    let mig = dir.join("migration.sock");
    let _ = std::fs::remove_file(&mig);
    let mut src = Qemu::start(guest, &dir, &hv1, "qtap-src", None)?;
    lab.hv("hv1")?.plug("qtap-src", "vm")?;
    src.wait_ready(Duration::from_secs(60))?;
    let dst = Qemu::start(guest, &dir, &hv2, "qtap-dst", Some(&mig))?;
    lab.hv("hv2")?.plug("qtap-dst", "vm")?;
    if !arm.sends_rarp() {
        // As with vhost-user: no announce after the switchover.
        dst.qmp()?.execute("migrate-set-parameters", json!({"announce-rounds": 0}))?;
    }
    Ok((src, dst, mig))
}

/// Waits (30 s at most) until the guest answers the peer (ARP, the echo service), before
/// measuring; the error says what the guest and hv1 look like.
fn wait_answering(lab: &PacketLab, src: &Qemu, watch: &SbWatch) -> Result<()> {
    let answers = |secs: &str| -> Result<bool> {
        let mut h = Helper::start(lab.peer_ns(), lab.helper_path(), &["ping", VM_IP, secs])?;
        Ok(h.first("ok", Duration::from_secs(60))?["ok"] == json!(true))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answers("5")? {
        if Instant::now() > deadline {
            let hv1 = &lab.hv("hv1")?.ns;
            bail!(
                "the guest does not answer ping from the peer; its console:\n{}\ntap: {:?}\nSB: {:?}\nbr-int: {:?}",
                src.console_text(),
                sandbox::run_tool("ip", &["-n", hv1, "-s", "link", "show", "qtap-src"]),
                watch.current("vm"),
                lab.hv("hv1")?.vsctl(&["show"])
            );
        }
    }
    Ok(())
}

/// Migrates the guest from `src` over the socket `mig`; when QEMU said it completed, and its
/// downtime (ms).
fn migrate(src: &Qemu, mig: &Path) -> Result<(Instant, f64)> {
    let mut qmp = src.qmp()?;
    qmp.execute("migrate", json!({"uri": format!("unix:{}", mig.display())}))?;
    loop {
        let info = qmp.execute("query-migrate", json!({}))?;
        match info["status"].as_str() {
            Some("completed") => return Ok((Instant::now(), info["downtime"].as_f64().unwrap_or(f64::NAN))),
            Some("failed") | Some("cancelled") => bail!("migration {}: {info}", info["status"]),
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// What the traffic's `result` says, around the switchover at `t_switch` (wall clock) and
/// before the CMS's first write at `t_write`; the SB milestones left to the caller.
fn traffic_figures(arm: Arm, result: &Value, t_switch: f64, t_write: f64) -> Measured {
    let end = result["end"].as_f64().unwrap_or(t_switch + 5.0);
    let echo = super::run::times(&result["tcp"]["echo_times"]);
    let replies = super::run::times(&result["udp"]["reply_times"]);
    let window = (t_switch - 0.5, end - 0.1);
    let noise_until = t_write - 0.05;
    let noise_from = result["start"].as_f64().unwrap_or(noise_until - 1.0) + 0.3;
    let sent = result["udp"]["sent"].as_u64().unwrap_or(0);
    let received = result["udp"]["received"].as_u64().unwrap_or(0);
    Measured {
        arm: arm.label(),
        tcp_survived: result["tcp"]["survived"].as_bool().unwrap_or(false),
        tcp_error: result["tcp"]["error"].as_str().map(String::from),
        tcp_stall_ms: longest_gap(&echo, window.0, window.1) * 1000.0,
        interruption_ms: longest_gap(&replies, window.0, window.1) * 1000.0,
        lost: sent.saturating_sub(received),
        noise_ms: longest_gap(&replies, noise_from, noise_until) * 1000.0,
        dup_to_both: 0,
        rarp_to_activated_ms: None,
        first_write_to_bound_ms: None,
        switch_to_final_ms: None,
        qemu_downtime_ms: None,
    }
}
