//! Ethernet frames as hex, for `netdev-dummy/receive`: the RARP a migrated VM announces
//! itself with, ARP requests.

use std::net::Ipv4Addr;

use anyhow::{bail, Result};

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
}
