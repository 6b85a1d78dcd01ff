//! No container engine runs here: check what can be checked. The manifests parse and have the
//! shape Kubernetes and compose expect, and the image builds the binary the way the README
//! says.

use crate::common::manifest as yaml;

use std::process::Command;

#[test]
fn manifests_parse_and_wire_the_proxy_to_the_local_nb_socket() {
    let sidecar = yaml("kube-ovn-sidecar.yaml");
    let c = &sidecar["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["name"], "ovn-nb-proxy");
    let args: Vec<&str> = c["args"].as_array().expect("args").iter().filter_map(|a| a.as_str()).collect();
    // The local member first, then every member (from the ConfigMap), sessions to the first.
    assert!(args.contains(&"--upstream=unix:/var/run/ovn/ovnnb_db.sock,$(NB_MEMBERS)"), "{args:?}");
    assert!(args.contains(&"--session-upstream=first"), "{args:?}");
    let env = &c["env"][0];
    assert_eq!(env["name"], "NB_MEMBERS");
    let config = yaml("kube-ovn-nb-proxy-config.yaml");
    assert_eq!(config["kind"], "ConfigMap");
    assert_eq!(env["valueFrom"]["configMapKeyRef"]["name"], config["metadata"]["name"]);
    let key = env["valueFrom"]["configMapKeyRef"]["key"].as_str().expect("key");
    let members = config["data"][key].as_str().expect("the members in the ConfigMap");
    for m in members.split(',') {
        m.parse::<ovn_nb_proxy::net::remote::Remote>().unwrap_or_else(|e| panic!("{m}: {e}"));
    }
    assert!(args.contains(&"--listen=ptcp:6647:0.0.0.0"), "{args:?}");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 6647);
    let svc = yaml("kube-ovn-nb-service.yaml");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 6647);
    let compose = yaml("compose.yaml");
    assert!(compose["services"]["nb"].is_object() && compose["services"]["proxy"].is_object());
    // Every flag the manifests pass is one the binary accepts.
    let help = Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy")).arg("--help").output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    let compose_args = compose["services"]["proxy"]["command"].as_array().expect("command").clone();
    for a in args.iter().copied().chain(compose_args.iter().filter_map(|a| a.as_str())) {
        let flag = a.split('=').next().unwrap_or(a);
        assert!(help.contains(flag), "{flag} is not a flag of ovn-nb-proxy");
    }
}

#[test]
fn the_image_builds_the_way_the_readme_says() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dockerfile = std::fs::read_to_string(format!("{root}/docker/Dockerfile")).expect("Dockerfile");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README");
    let build = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("RUN "))
        .filter(|l| l.starts_with("cargo build"))
        .expect("a cargo build step");
    assert!(readme.contains(build), "README shows the image's build step `{build}`");
    assert!(dockerfile.contains("COPY --from=build /src/target/release/ovn-nb-proxy"));
    let runtime: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(runtime.len(), 2, "multi-stage: build, then runtime");
}
