//! No container engine runs here: check what can be checked. The manifests parse and have the
//! shape Kubernetes and compose expect, and the image builds the binary the way the README
//! says.

use std::process::Command;

fn yaml(path: &str) -> serde_json::Value {
    let full = format!("{}/docker/{path}", env!("CARGO_MANIFEST_DIR"));
    let py = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", py, &full])
        .output()
        .expect("python3 with yaml (Debian package python3-yaml)");
    assert!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn manifests_parse_and_wire_the_proxy_to_the_local_nb_socket() {
    let sidecar = yaml("kube-ovn-sidecar.yaml");
    let c = &sidecar["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["name"], "ovn-nb-proxy");
    let args: Vec<&str> = c["args"].as_array().expect("args").iter().filter_map(|a| a.as_str()).collect();
    assert!(args.contains(&"--upstream=unix:/var/run/ovn/ovnnb_db.sock"), "{args:?}");
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
