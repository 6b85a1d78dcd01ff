//! The proxy in front of a real 3-member Raft NB cluster on loopback: leader-only clients,
//! migration rewrites, the leader killed, two proxies electing one reconciler, and the sidecar
//! deployment as docker/kube-ovn-sidecar.yaml runs it (one proxy per member, one reconciler).

use crate::common::*;

use std::process::Command;
use std::time::{Duration, Instant};

use ovn_nb_lab::sandbox::NbCluster;

struct World {
    cluster: NbCluster,
    _dir: tempfile::TempDir,
}

fn cluster() -> World {
    let dir = tempfile::Builder::new().prefix("nbproxy-cluster.").tempdir().expect("tmp");
    let cluster = NbCluster::start(dir.path(), 3).unwrap_or_else(|e| panic!("cluster: {e:#}"));
    let leader = cluster.leader().expect("leader");
    ovn_nbctl(&cluster.unix_remote(leader), &["init"]).expect("init");
    World { cluster, _dir: dir }
}

/// The members' TCP remotes, followers first: a proxy that used them in order would land on a
/// follower, which leader-only clients refuse.
fn followers_first(c: &NbCluster) -> String {
    let leader = c.leader().expect("leader");
    let mut order: Vec<usize> = (0..c.len()).filter(|&i| i != leader).collect();
    order.push(leader);
    order.iter().map(|&i| c.tcp_remote(i)).collect::<Vec<_>>().join(",")
}

fn python_idl(remote: &str) {
    let script = format!("{}/tests/py/idl_commit.py", env!("CARGO_MANIFEST_DIR"));
    let schema = ovn_nb_lab::sandbox::nb_schema().expect("schema");
    let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into()))
        .args([script.as_str(), remote, &schema.to_string_lossy()])
        .output()
        .expect("python3 (python3-openvswitch)");
    assert!(out.status.success(), "IDL: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn leader_only_clients_and_rewrites_go_to_the_leader() {
    let w = cluster();
    let mut p = Proxy::start(&followers_first(&w.cluster), &[]);
    p.wait_log("cluster leader", Duration::from_secs(10));
    p.wait_log("port cache synchronised", Duration::from_secs(10));
    // ovn-nbctl and the Python IDL are leader-only: through one proxy remote they work only if
    // the proxy puts them on the leader.
    seed_vm1(&p.unix_remote());
    python_idl(&p.tcp_remote());
    // A migration on the cluster: the rewrite lands, and every member agrees.
    ovn_nbctl(
        &p.unix_remote(),
        &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"],
    )
    .expect("tag");
    for i in 0..w.cluster.len() {
        eventually(&format!("member {i} has the rewritten options"), || {
            ovn_nbctl(
                &w.cluster.unix_remote(i),
                &["--no-leader-only", "get", "Logical_Switch_Port", "vm1", "options:requested-chassis"],
            )
            .is_ok_and(|o| o.trim() == "\"hv1,hv2\"")
        });
    }
    let show = p.appctl(&["proxy/show"]).expect("proxy/show");
    let leader = w.cluster.tcp_remote(w.cluster.leader().expect("leader"));
    assert!(show.contains(&format!("cluster leader: {leader}")), "{show}");
}

#[test]
fn the_leader_killed_writes_resume_and_rewrites_still_apply() {
    let mut w = cluster();
    let mut p = Proxy::start(&followers_first(&w.cluster), &["--metrics=127.0.0.1:0"]);
    p.wait_log("port cache synchronised", Duration::from_secs(10));
    seed_vm1(&p.unix_remote());
    let old = w.cluster.leader().expect("leader");
    // A client session held on the leader: closed by the proxy when the leader goes.
    let mut held = Raw::connect(&p.unix);
    held.send(br#"{"method":"echo","params":[],"id":1}"#);
    assert_eq!(held.recv()["id"], 1);
    let t0 = Instant::now();
    w.cluster.kill(old);
    let mut tries = 0;
    loop {
        tries += 1;
        if ovn_nbctl(
            &p.unix_remote(),
            &["--timeout=3", "set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"],
        )
        .is_ok()
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "writes did not resume within 10 s:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let failover = t0.elapsed();
    eprintln!(
        "failover: first write through the proxy {failover:?} after the leader was killed ({tries} tries)"
    );
    let new = w.cluster.leader().expect("new leader");
    assert_ne!(new, old);
    let opts = ovn_nbctl(
        &w.cluster.unix_remote(new),
        &["get", "Logical_Switch_Port", "vm1", "options:requested-chassis"],
    )
    .expect("get");
    assert_eq!(opts.trim(), "\"hv1,hv2\"", "the rewrite applied after the failover");
    assert!(held.read_to_end().is_empty(), "the session on the old leader was closed");
    eventually("the leader change is counted", || {
        p.appctl(&["metrics/show"]).is_ok_and(|m| m.contains("ovn_nb_proxy_leader_changes_total 1"))
    });
}

fn is_active(p: &Proxy) -> bool {
    p.appctl(&["proxy/show"]).is_ok_and(|s| s.contains("active reconciler: yes"))
}

#[test]
fn two_proxies_elect_one_reconciler_and_the_other_takes_over() {
    let w = cluster();
    let remotes = followers_first(&w.cluster);
    let leader = w.cluster.leader().expect("leader");
    ovn_nbctl(
        &w.cluster.unix_remote(leader),
        &["ls-add", "sw0", "--", "lsp-add", "sw0", "vm1", "--", "lsp-add", "sw0", "vm2"],
    )
    .expect("seed");
    for vm in ["vm1", "vm2"] {
        ovn_nbctl(&w.cluster.unix_remote(leader), &["lsp-set-options", vm, "requested-chassis=hv1"])
            .expect("rc");
    }
    let a = Proxy::start(&remotes, &[]);
    let b = Proxy::start(&remotes, &[]);
    eventually("one of the two is the active reconciler", || is_active(&a) || is_active(&b));
    std::thread::sleep(Duration::from_millis(300));
    assert!(is_active(&a) ^ is_active(&b), "exactly one holds the lock");
    let (holder, mut standby) = if is_active(&a) { (a, b) } else { (b, a) };
    // A tag written around the proxies is fixed once, by the holder.
    ovn_nbctl(
        &w.cluster.unix_remote(leader),
        &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"],
    )
    .expect("direct");
    let get = |vm: &str| {
        ovn_nbctl(
            &w.cluster.unix_remote(leader),
            &["get", "Logical_Switch_Port", vm, "options:requested-chassis"],
        )
        .map(|o| o.trim().to_string())
        .unwrap_or_default()
    };
    eventually("the holder reconciles", || get("vm1") == "\"hv1,hv2\"");
    assert!(!standby.log_text().contains(": reconcile "), "the standby did not write");
    // The holder dies: the standby gets the lock and takes over.
    drop(holder);
    standby.wait_log("this proxy is the active reconciler", Duration::from_secs(10));
    assert!(is_active(&standby));
    ovn_nbctl(
        &w.cluster.unix_remote(leader),
        &["set", "Logical_Switch_Port", "vm2", "external_ids:migration-destination=hv3"],
    )
    .expect("direct");
    eventually("the new holder reconciles", || get("vm2") == "\"hv1,hv3\"");
}

/// The sidecar's arguments for member `i`, as docker/kube-ovn-sidecar.yaml gives them: its
/// local socket is member `i`'s, `$(NB_MEMBERS)` every member's TCP remote written as Kube-OVN
/// writes addresses (`tcp:[IP]:PORT`). Listeners, control socket, metrics and log format are
/// the harness's own; any other flag the manifest gains is passed through.
fn manifest_sidecar(c: &NbCluster, i: usize) -> Proxy {
    let m = manifest("kube-ovn-sidecar.yaml");
    let args = m["spec"]["template"]["spec"]["containers"][0]["args"].as_array().expect("args").clone();
    let members: Vec<String> =
        (0..c.len()).map(|j| c.tcp_remote(j).replacen("tcp:127.0.0.1:", "tcp:[127.0.0.1]:", 1)).collect();
    let mut upstream = None;
    let mut extra = Vec::new();
    for a in args.iter().filter_map(|a| a.as_str()) {
        let a = a
            .replace("unix:/var/run/ovn/ovnnb_db.sock", &c.unix_remote(i))
            .replace("$(NB_MEMBERS)", &members.join(","));
        match a.split('=').next().unwrap_or_default() {
            "--upstream" => upstream = Some(a["--upstream=".len()..].to_string()),
            "--listen" | "--unixctl" | "--metrics" | "--log-format" => {}
            _ => extra.push(a),
        }
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    Proxy::start(&upstream.expect("the manifest names the upstream"), &extra)
}

fn active(ps: &[Proxy]) -> usize {
    ps.iter().filter(|p| is_active(p)).count()
}

/// Kube-OVN runs 3 NB members, each with a sidecar. Locks are per server: with its local
/// socket alone, every sidecar holds the lock on its own member (three active reconcilers).
/// With the manifest's arguments (local first, every member, sessions to the first) exactly
/// one holds it, stays the only one, and after the leader is killed exactly one holds it again.
#[test]
fn sidecars_as_the_manifest_runs_them_elect_exactly_one_reconciler() {
    let mut w = cluster();
    let n = w.cluster.len();
    {
        let alone: Vec<Proxy> =
            (0..n).map(|i| Proxy::start(&w.cluster.unix_remote(i), &["--session-upstream=first"])).collect();
        eventually("each sidecar on its local socket alone holds its member's lock", || active(&alone) == n);
    }
    let sidecars: Vec<Proxy> = (0..n).map(|i| manifest_sidecar(&w.cluster, i)).collect();
    // A client given every sidecar hops to the one fronting the leader, as it would with the
    // members themselves.
    let all: Vec<String> = sidecars.iter().map(Proxy::unix_remote).collect();
    ovn_nbctl(&all.join(","), &["ls-add", "sw-sidecar", "--", "lsp-add", "sw-sidecar", "vm1"])
        .expect("ovn-nbctl over the sidecars");
    let leader = w.cluster.leader().expect("leader");
    ovn_nbctl(&w.cluster.unix_remote(leader), &["lsp-set-options", "vm1", "requested-chassis=hv1"])
        .expect("rc");
    eventually("exactly one sidecar is the active reconciler", || active(&sidecars) == 1);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(active(&sidecars), 1, "one holder, and it stays the only one");
    }
    // A tag written around the sidecars is fixed, by the one holder.
    let direct = |c: &NbCluster, args: &[&str]| {
        let l = c.leader().expect("leader");
        ovn_nbctl(&c.unix_remote(l), args)
    };
    direct(&w.cluster, &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"])
        .expect("tag");
    let rc = |c: &NbCluster| {
        direct(c, &["get", "Logical_Switch_Port", "vm1", "options:requested-chassis"]).unwrap_or_default()
    };
    eventually("the holder reconciles", || rc(&w.cluster).trim() == "\"hv1,hv2\"");
    let writers = sidecars.iter().filter(|p| p.log_text().contains(": reconcile ")).count();
    assert_eq!(writers, 1, "one sidecar wrote the fix");
    // The leader dies (its sidecar lives on and follows the new leader through the others).
    w.cluster.kill(leader);
    eventually("a new leader", || w.cluster.leader().is_ok_and(|l| l != leader));
    eventually("exactly one holder again after the leader died", || active(&sidecars) == 1);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(active(&sidecars), 1, "one holder after the election, and only one");
    }
    direct(&w.cluster, &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv3"])
        .expect("tag");
    eventually("the new holder reconciles", || rc(&w.cluster).trim() == "\"hv1,hv3\"");
}

/// A proxy started while the cluster elects a leader: a tag sent through it before it has found
/// the leader and loaded its cache is held until then, and rewritten in its own transaction (it
/// used to go through unrewritten, fixed by the reconciler about a second later).
#[test]
fn a_tag_sent_while_the_cluster_elects_is_rewritten() {
    let mut w = cluster();
    let leader = w.cluster.leader().expect("leader");
    seed_vm1(&w.cluster.unix_remote(leader));
    let remotes = (0..w.cluster.len()).map(|i| w.cluster.tcp_remote(i)).collect::<Vec<_>>().join(",");
    w.cluster.kill(leader);
    let mut p = Proxy::start(&remotes, &[]);
    let t0 = Instant::now();
    let tag = serde_json::json!({"op": "mutate", "table": "Logical_Switch_Port", "where": [["name", "==", "vm1"]],
        "mutations": [["external_ids", "insert", ["map", [["migration-destination", "hv2"]]]]]});
    loop {
        let reply = try_transact(&p.unix, vec![tag.clone()]);
        if reply.as_ref().is_some_and(|r| r["result"][0]["count"] == 1) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no write went through: {reply:?}\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "first write through the proxy {:?} after it started on a cluster without a leader",
        t0.elapsed()
    );
    let new = w.cluster.leader().expect("new leader");
    let opts = ovn_nbctl(
        &w.cluster.unix_remote(new),
        &["get", "Logical_Switch_Port", "vm1", "options:requested-chassis"],
    )
    .expect("get");
    assert_eq!(opts.trim(), "\"hv1,hv2\"", "committed unrewritten");
    p.wait_log("rewrite port=vm1 ", Duration::from_secs(5));
    assert!(!p.log_text().contains("reconcile port=vm1 "), "{}", p.log_text());
}
