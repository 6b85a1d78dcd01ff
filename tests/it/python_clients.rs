//! Python clients through the proxy: the `ovs` IDL (what Neutron and ovsdbapp are built on) and
//! `ovsdbapp` itself, each committing real transactions; results read back directly.

use crate::common::*;
use std::process::Command;

/// Debian's interpreter, where python3-openvswitch and python3-ovsdbapp live (a `python3`
/// earlier on PATH, such as a pyenv one, does not see them); `PYTHON` overrides it.
fn interpreter() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

fn python(script: &str, remote: &str) -> String {
    let path = format!("{}/tests/py/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(interpreter())
        .arg(&path)
        .arg(remote)
        .arg(ovn_nb_lab::sandbox::nb_schema().expect("schema"))
        .output()
        .unwrap_or_else(|e| panic!("python3 not runnable: {e} (install Debian package python3)"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}): {stderr}\n(the Debian packages python3-openvswitch and python3-ovsdbapp are required)",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn python_ovs_idl_commits_through_the_proxy() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let out = python("idl_commit.py", &p.tcp_remote());
    assert!(out.contains("committed"), "{out}");
    let ports = ovn_nbctl(
        &nb.server.unix_remote(),
        &["--bare", "--columns=name,options", "list", "Logical_Switch_Port"],
    )
    .expect("list");
    assert!(ports.contains("py-port"), "{ports}");
    assert!(ports.contains("py=1"), "setkey through the proxy: {ports}");
    assert!(!ports.contains("gone=1"), "delkey through the proxy: {ports}");
}

#[test]
fn ovsdbapp_commits_through_the_proxy() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let out = python("ovsdbapp_commit.py", &p.unix_remote());
    assert!(out.contains("committed"), "{out}");
    let show = ovn_nbctl(&nb.server.unix_remote(), &["show"]).expect("show");
    assert!(show.contains("sw-ovsdbapp") && show.contains("port-ovsdbapp"), "{show}");
    let ids = ovn_nbctl(
        &nb.server.unix_remote(),
        &["get", "Logical_Switch_Port", "port-ovsdbapp", "external_ids:owner"],
    )
    .expect("get");
    assert_eq!(ids.trim(), "neutron");
}
