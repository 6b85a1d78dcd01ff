//! One simulated chassis (its `ovs-vswitchd` and `ovn-controller`) and the OpenFlow flows it
//! installs, as `ovs-ofctl dump-flows` prints them.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};

use super::process::{ctl, vsctl, vswitchd_appctl};

/// One simulated chassis: its `ovs-vswitchd` (bridges `br-int`, `br-phys`) and `ovn-controller`.
pub struct Hypervisor {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) ip: Ipv4Addr,
    pub(super) phys_mac: String,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
