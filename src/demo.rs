//! `ovn-nb-proxy demo`: the README's main job.
//!
//! Starts a throw-away NB `ovsdb-server` in a temp dir and the proxy in front of it, then walks
//! ports through live migrations with `ovn-nbctl` writing only tags through the proxy, printing
//! after each step the options the database holds (read directly, not through the proxy).
//! Everything started is stopped on exit, Ctrl-C included.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
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
    let nb = {
        let d = dir.path().to_path_buf();
        blocking(move || NbServer::start(&d)).await?
    };
    println!("• NB database: ovsdb-server (pid {}) on unix:{}", nb.pid(), nb.socket().display());

    let proxy_sock = dir.path().join("proxy.sock");
    let cfg = Config::new(vec![Active::Unix(nb.socket())], vec![Passive::Unix(proxy_sock.clone())]);
    let proxy = Proxy::bind(cfg).await?;
    let shared = proxy.shared();
    let demo = Demo { proxy_db: format!("unix:{}", proxy_sock.display()), direct_db: nb.unix_remote() };
    println!("• proxy: listening on {}, upstream {}", demo.proxy_db, demo.direct_db);
    let stop = CancellationToken::new();
    let serving = tokio::spawn(proxy.serve(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shared.cache.is_synced() {
        if Instant::now() > deadline {
            bail!("the proxy's port monitor did not synchronise within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    println!("\n== A VM port running on hv1 ==");
    demo.nbctl(&["init"]).await?;
    demo.nbctl(&["ls-add", "sw0"]).await?;
    demo.nbctl(&["lsp-add", "sw0", "vm1"]).await?;
    demo.nbctl(&["lsp-set-addresses", "vm1", "00:00:00:00:00:01 10.0.0.11"]).await?;
    demo.nbctl(&["lsp-set-options", "vm1", "requested-chassis=hv1"]).await?;
    demo.show_options("vm1").await?;

    println!("== The CMS tags the port as migrating to hv2 (tags only: the proxy writes the options) ==");
    demo.nbctl(&["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"]).await?;
    demo.show_options("vm1").await?;

    println!("== A writer that knows nothing of migration replaces the options ==");
    demo.nbctl(&["lsp-set-options", "vm1", "requested-chassis=hv1", "mcast_flood=true"]).await?;
    demo.show_options("vm1").await?;

    println!("== The migration succeeds ==");
    demo.nbctl(&["set", "Logical_Switch_Port", "vm1", "external_ids:migration-phase=Succeeded"]).await?;
    demo.show_options("vm1").await?;

    println!("== A second port migrates to hv3 and fails ==");
    demo.nbctl(&["lsp-add", "sw0", "vm2", "--", "lsp-set-options", "vm2", "requested-chassis=hv1"]).await?;
    demo.nbctl(&["set", "Logical_Switch_Port", "vm2", "external_ids:migration-destination=hv3"]).await?;
    demo.show_options("vm2").await?;
    demo.nbctl(&["set", "Logical_Switch_Port", "vm2", "external_ids:migration-phase=Failed"]).await?;
    demo.show_options("vm2").await?;

    println!("== A third port is tagged by a writer that bypasses the proxy: the reconciler fixes it ==");
    demo.nbctl(&["lsp-add", "sw0", "vm3", "--", "lsp-set-options", "vm3", "requested-chassis=hv1"]).await?;
    let direct = demo.direct_db.clone();
    let t0 = Instant::now();
    demo.nbctl_at(&direct, &["set", "Logical_Switch_Port", "vm3", "external_ids:migration-destination=hv2"])
        .await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !demo.options("vm3").await?.contains("rarp") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("  (reconciled within {} ms)", t0.elapsed().as_millis());
    demo.show_options("vm3").await?;

    println!("== What the database holds now (read directly, not through the proxy) ==");
    let dump = blocking(move || {
        sandbox::run_tool(
            "ovsdb-client",
            &["dump", &direct, "OVN_Northbound", "Logical_Switch_Port", "name", "options", "external_ids"],
        )
    })
    .await?;
    print!("{dump}");

    println!("\n== What the proxy counted ==");
    for line in shared.metrics.encode().lines().filter(|l| !l.starts_with('#') && !l.ends_with(" 0")) {
        println!("  {line}");
    }
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
