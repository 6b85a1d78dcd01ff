//! SSL on both legs with real `ovs-pki` certificates: ovn-nbctl over SSL through the proxy over
//! SSL; a client certificate from another CA refused before anything reaches the database;
//! certificates rotated without dropping sessions; clear errors for bad files.

use crate::common::*;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ovn_nb_lab::sandbox::{CertPair, Pki};

fn pssl_port(p: &mut Proxy) -> u16 {
    let line = p.wait_log("listen=pssl:", Duration::from_secs(10));
    line.split("listen=pssl:")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .expect("port")
}

fn tls_args(pair: &CertPair, ca: &Path) -> Vec<String> {
    vec![
        format!("--private-key={}", pair.key.display()),
        format!("--certificate={}", pair.cert.display()),
        format!("--ca-cert={}", ca.display()),
    ]
}

/// `ovn-nbctl` over SSL with a client certificate.
fn nbctl_ssl(db: &str, pair: &CertPair, ca: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut full: Vec<String> = vec!["--timeout=5".into()];
    full.extend(tls_args(pair, ca));
    full.push(format!("--db={db}"));
    full.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    run_tool("ovn-nbctl", &refs)
}

#[test]
fn ovn_nbctl_over_ssl_through_the_proxy_over_ssl() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::init(&dir.path().join("ca")).expect("ovs-pki init");
    let (server, proxy_pair, client) = (
        pki.issue("server").expect("server"),
        pki.issue("proxy").expect("proxy"),
        pki.issue("client").expect("client"),
    );
    std::fs::create_dir_all(dir.path().join("nb")).expect("mkdir");
    let nb = ovn_nb_lab::sandbox::NbServer::start_ssl(&dir.path().join("nb"), &server, &pki.ca_cert())
        .expect("NB over SSL");
    ovn_nbctl(&nb.unix_remote(), &["init"]).expect("init");
    let mut args = vec!["--listen=pssl:0".to_string()];
    args.extend(tls_args(&proxy_pair, &pki.ca_cert()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Proxy::start(&nb.ssl_remote(), &refs);
    let port = pssl_port(&mut p);
    let db = format!("ssl:127.0.0.1:{port}");
    nbctl_ssl(
        &db,
        &client,
        &pki.ca_cert(),
        &[
            "ls-add",
            "sw-ssl",
            "--",
            "lsp-add",
            "sw-ssl",
            "vm1",
            "--",
            "lsp-set-options",
            "vm1",
            "requested-chassis=hv1",
        ],
    )
    .expect("ovn-nbctl over SSL through the proxy");
    // The proxy's own monitor works over SSL too: the policy sees the port and rewrites.
    p.wait_log("port cache synchronised", Duration::from_secs(10));
    nbctl_ssl(
        &db,
        &client,
        &pki.ca_cert(),
        &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"],
    )
    .expect("tag over SSL");
    let show = nbctl_ssl(&db, &client, &pki.ca_cert(), &["show"]).expect("show");
    assert_eq!(show, ovn_nbctl(&nb.unix_remote(), &["show"]).expect("direct show"));
    let opts =
        ovn_nbctl(&nb.unix_remote(), &["get", "Logical_Switch_Port", "vm1", "options:requested-chassis"])
            .expect("get");
    assert_eq!(opts.trim(), "\"hv1,hv2\"");
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_and_nothing_reaches_the_database() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::init(&dir.path().join("ca")).expect("ovs-pki init");
    let rogue_pki = Pki::init(&dir.path().join("rogue-ca")).expect("second CA");
    let proxy_pair = pki.issue("proxy").expect("proxy");
    let rogue = rogue_pki.issue("rogue").expect("rogue");
    let nb = nb();
    let mut args = vec!["--listen=pssl:0".to_string()];
    args.extend(tls_args(&proxy_pair, &pki.ca_cert()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Proxy::start(&nb.server.unix_remote(), &refs);
    let db = format!("ssl:127.0.0.1:{}", pssl_port(&mut p));
    // The rogue client trusts the proxy's CA, but its own certificate is from another CA.
    let err = nbctl_ssl(&db, &rogue, &pki.ca_cert(), &["ls-add", "sw-rogue"]).expect_err("refused");
    assert!(
        err.to_string().contains("database connection failed") || err.to_string().contains("failed"),
        "{err:#}"
    );
    p.wait_log("client TLS handshake failed", Duration::from_secs(5));
    let names = ovn_nbctl(&nb.server.unix_remote(), &["ls-list"]).expect("list");
    assert!(!names.contains("sw-rogue"), "nothing of the rogue client reached the database");
    let metrics = p.appctl(&["metrics/show"]).expect("metrics");
    assert!(!metrics.contains("ovn_nb_proxy_tls_handshake_failures_total 0"), "{metrics}");
    assert!(!metrics.contains("ovn_nb_proxy_client_sessions_open 1"));
}

#[test]
fn certificates_rotate_without_dropping_sessions() {
    let dir = tempfile::tempdir().expect("tmp");
    let old_ca = Pki::init(&dir.path().join("old")).expect("old CA");
    let new_ca = Pki::init(&dir.path().join("new")).expect("new CA");
    let (old_proxy, old_client) = (old_ca.issue("proxy").expect("p"), old_ca.issue("client").expect("c"));
    let (new_proxy, new_client) = (new_ca.issue("proxy").expect("p"), new_ca.issue("client").expect("c"));
    // The proxy's files live at fixed paths, as a mounted secret does.
    let live = CertPair { key: dir.path().join("tls.key"), cert: dir.path().join("tls.crt") };
    let live_ca = dir.path().join("ca.crt");
    let install = |pair: &CertPair, ca: &Path| {
        std::fs::copy(&pair.key, &live.key).expect("key");
        std::fs::copy(&pair.cert, &live.cert).expect("cert");
        std::fs::copy(ca, &live_ca).expect("ca");
    };
    install(&old_proxy, &old_ca.ca_cert());
    let nb = nb();
    let mut args = vec!["--listen=pssl:0".to_string()];
    args.extend(tls_args(&live, &live_ca));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Proxy::start(&nb.server.unix_remote(), &refs);
    let db = format!("ssl:127.0.0.1:{}", pssl_port(&mut p));
    nbctl_ssl(&db, &old_client, &old_ca.ca_cert(), &["ls-add", "before"]).expect("old certificates work");
    // A session held open over SSL across the rotation.
    let mut held_args = vec!["--timeout=30".to_string()];
    held_args.extend(tls_args(&old_client, &old_ca.ca_cert()));
    held_args.extend([
        "monitor".into(),
        db.clone(),
        "OVN_Northbound".into(),
        "Logical_Switch".into(),
        "name".into(),
    ]);
    let held_refs: Vec<&str> = held_args.iter().map(String::as_str).collect();
    let held = Watcher::start("ovsdb-client", &held_refs);
    held.wait_for("before");
    std::thread::sleep(Duration::from_millis(1100)); // a later mtime than the first load
    install(&new_proxy, &new_ca.ca_cert());
    p.wait_log("reloaded for new connections", Duration::from_secs(10));
    nbctl_ssl(&db, &new_client, &new_ca.ca_cert(), &["ls-add", "after"]).expect("new certificates work");
    assert!(
        nbctl_ssl(&db, &old_client, &old_ca.ca_cert(), &["ls-list"]).is_err(),
        "old certificates no longer"
    );
    held.wait_for("after");
    // A half-written secret is not loaded: the proxy keeps the material in force.
    std::fs::write(&live.key, "not a key\n").expect("write");
    p.wait_log("do not load; keeping the previous ones", Duration::from_secs(10));
    nbctl_ssl(&db, &new_client, &new_ca.ca_cert(), &["ls-list"]).expect("still served");
}

#[test]
fn bad_tls_files_are_refused_at_start_with_the_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::init(&dir.path().join("ca")).expect("ovs-pki");
    let (a, b) = (pki.issue("a").expect("a"), pki.issue("b").expect("b"));
    let run = |key: &Path, cert: &Path, ca: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy"))
            .args(["--upstream=unix:/nonexistent", "--listen=pssl:0"])
            .args([
                format!("-p{}", key.display()),
                format!("-c{}", cert.display()),
                format!("-C{}", ca.display()),
            ])
            .output()
            .expect("run");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("missing.pem");
    let err = run(&missing, &a.cert, &pki.ca_cert());
    assert!(err.contains("missing.pem"), "{err}");
    let err = run(&a.key, &b.cert, &pki.ca_cert());
    assert!(err.contains("does not match"), "{err}");
    let err = run(&a.key, &a.cert, &a.key);
    assert!(err.contains("CA certificate") && err.contains("no PEM certificate"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy"))
        .args(["--upstream=unix:/nonexistent", "--listen=pssl:0"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("SSL needs all of"));
}

/// `replay` reaches a database over SSL (the one OVSDB client, with the proxy's TLS): the
/// ovn-nbctl fixture replays green against an `ssl:` remote, and without certificates it says
/// what is missing and exits 2.
#[test]
fn a_transcript_replays_green_over_ssl() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::init(&dir.path().join("ca")).expect("ovs-pki init");
    let (server, client) = (pki.issue("server").expect("server"), pki.issue("client").expect("client"));
    std::fs::create_dir_all(dir.path().join("nb")).expect("mkdir");
    let nb = ovn_nb_lab::sandbox::NbServer::start_ssl(&dir.path().join("nb"), &server, &pki.ca_cert())
        .expect("NB over SSL");
    ovn_nbctl(&nb.unix_remote(), &["init"]).expect("init");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/transcripts/ovn-nbctl.jsonl");
    let replay = |tls: &[String]| {
        Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy"))
            .arg("replay")
            .arg(&fixture)
            .args(["--upstream", &nb.ssl_remote()])
            .args(tls)
            .output()
            .expect("run replay")
    };
    let out = replay(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("SSL needs all of --private-key"), "{stderr}");
    let out = replay(&tls_args(&client, &pki.ca_cert()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all equal"),
        "replay over SSL: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
