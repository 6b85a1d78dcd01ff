//! `ovn-nb-proxy demo`: the README's main job.
//!
//! Starts a throw-away NB `ovsdb-server` in a temp dir, the proxy in front of it, drives
//! `ovn-nbctl` through the proxy, and prints each step and what the database then holds (read
//! over a direct connection). Everything started is stopped on exit, Ctrl-C included.

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::proxy::{Config, Proxy};
use crate::remote::{Active, Passive};
use crate::sandbox::{self, NbServer};

pub async fn run(shutdown: CancellationToken) -> Result<()> {
    tokio::select! {
        r = walk_through() => r,
        _ = shutdown.cancelled() => {
            println!("\ninterrupted: stopping the database and the proxy");
            Ok(())
        }
    }
}

async fn walk_through() -> Result<()> {
    let dir =
        tempfile::Builder::new().prefix("ovn-nb-proxy-demo.").tempdir().context("creating a temp dir")?;
    let nb = {
        let d = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || NbServer::start(&d)).await??
    };
    println!("• NB database: ovsdb-server (pid {}) on unix:{}", nb.pid(), nb.socket().display());

    let proxy_sock = dir.path().join("proxy.sock");
    let cfg =
        Config::new(vec![Active::Unix(nb.socket().to_path_buf())], vec![Passive::Unix(proxy_sock.clone())]);
    let proxy = Proxy::bind(cfg).await?;
    let proxy_db = format!("unix:{}", proxy_sock.display());
    println!("• proxy: listening on {proxy_db}, upstream unix:{}", nb.socket().display());
    let stop = CancellationToken::new();
    let serving = tokio::spawn(proxy.serve(stop.clone()));

    let steps: &[&[&str]] = &[
        &["init"],
        &["ls-add", "sw0"],
        &["lsp-add", "sw0", "vm1"],
        &["lsp-set-addresses", "vm1", "00:00:00:00:00:01 10.0.0.11"],
        &["set", "Logical_Switch_Port", "vm1", "external_ids:owner=demo"],
        &["lsp-set-options", "vm1", "requested-chassis=hv1"],
        &["show"],
    ];
    for args in steps {
        println!("\n$ ovn-nbctl --db={proxy_db} {}", shell_words(args));
        let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let db = proxy_db.clone();
        let out = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            sandbox::ovn_nbctl(&db, &refs)
        })
        .await??;
        print!("{out}");
    }
    println!("\n• what the database holds now (read directly, not through the proxy):");
    let direct = nb.unix_remote();
    let dump = tokio::task::spawn_blocking(move || {
        sandbox::run_tool(
            "ovsdb-client",
            &[
                "dump",
                &direct,
                "OVN_Northbound",
                "Logical_Switch_Port",
                "name",
                "addresses",
                "options",
                "external_ids",
            ],
        )
    })
    .await??;
    print!("{dump}");
    stop.cancel();
    let _ = serving.await;
    println!("\n• done: stopping ovsdb-server and removing {}", dir.path().display());
    Ok(())
}

fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| if a.contains(' ') { format!("\"{a}\"") } else { (*a).to_string() })
        .collect::<Vec<_>>()
        .join(" ")
}
