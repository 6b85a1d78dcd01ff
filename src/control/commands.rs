//! The `ovs-appctl` commands: one table of name, synopsis, help and the function that answers.
//! `list-commands`, the dispatcher and the manual page all read it.

use std::sync::Arc;
use std::time::SystemTime;

use jsonrpc_core::{Error, IoHandler, Params, Value};
use tokio_util::sync::CancellationToken;

use super::LogControl;
use crate::proxy::{ProxyInfo, Shared};

/// What a command answers with: the text `ovs-appctl` prints, or the error it reports.
type Answer = Result<String, String>;

/// One control command.
pub struct Command {
    pub name: &'static str,
    /// The arguments, as `list-commands` shows them.
    pub synopsis: &'static str,
    /// What it does (the manual page).
    pub help: &'static str,
    run: fn(&Context, &[String]) -> Answer,
}

/// What the commands act on.
struct Context {
    shared: Arc<Shared>,
    info: ProxyInfo,
    log: Option<Arc<dyn LogControl>>,
    shutdown: CancellationToken,
}

pub const COMMANDS: &[Command] = &[
    Command {
        name: "exit",
        synopsis: "",
        help: "stop: no new sessions, the open ones drain (as on SIGTERM)",
        run: |c, _| {
            c.shutdown.cancel();
            Ok(String::new())
        },
    },
    Command { name: "list-commands", synopsis: "", help: "list these commands", run: |_, _| Ok(list()) },
    Command {
        name: "version",
        synopsis: "",
        help: "print the version",
        run: |_, _| Ok(format!("ovn-nb-proxy {}\n", env!("CARGO_PKG_VERSION"))),
    },
    Command {
        name: "proxy/show",
        synopsis: "",
        help: "listeners, upstreams, the cluster leader, sessions, the port cache, the reconciler",
        run: |c, _| Ok(proxy_show(c)),
    },
    Command {
        name: "metrics/show",
        synopsis: "",
        help: "the Prometheus metrics, as /metrics serves them",
        run: |c, _| Ok(c.shared.encode_metrics()),
    },
    Command {
        name: "migrations/list",
        synopsis: "",
        help: "one line per migration the proxy knows of: port, source, destination, phase, times",
        run: |c, _| Ok(c.shared.timelines.render_list(SystemTime::now())),
    },
    Command {
        name: "migrations/show",
        synopsis: "PORT",
        help: "the timeline of one port's migration (tags, rewrites, Southbound events)",
        run: |c, a| {
            let [port] = a else { return Err("usage: migrations/show PORT".into()) };
            c.shared.timelines.render_show(port).ok_or_else(|| format!("no migration of port {port}"))
        },
    },
    Command {
        name: "memory/show",
        synopsis: "",
        help: "resident memory and the sizes of the proxy's tables",
        run: |c, _| Ok(memory_show(&c.shared)),
    },
    Command {
        name: "vlog/list",
        synopsis: "",
        help: "the log filter in force",
        run: |c, _| Ok(format!("{}\n", logs(c)?.current())),
    },
    Command {
        name: "vlog/set",
        synopsis: "FILTER",
        help: "replace the log filter (tracing syntax, e.g. info,ovn_nb_proxy=debug)",
        run: |c, a| {
            let l = logs(c)?;
            if a.is_empty() {
                return Err("usage: vlog/set FILTER (e.g. info,ovn_nb_proxy=debug)".into());
            }
            l.set(&a.join(",")).map(|()| String::new())
        },
    },
    Command {
        name: "vlog/reopen",
        synopsis: "",
        help: "reopen the --log-file (after logrotate moved it)",
        run: |c, _| logs(c)?.reopen().map(|()| String::new()),
    },
];

/// The command table, bound to the proxy's state.
pub fn handler(
    shared: Arc<Shared>,
    info: ProxyInfo,
    log: Option<Arc<dyn LogControl>>,
    shutdown: CancellationToken,
) -> IoHandler {
    let context = Arc::new(Context { shared, info, log, shutdown });
    let mut io = IoHandler::new();
    for command in COMMANDS {
        let c = context.clone();
        io.add_sync_method(command.name, move |p| {
            (command.run)(&c, &args(p)).map(Value::String).map_err(|message| Error {
                code: jsonrpc_core::ErrorCode::InvalidParams,
                message,
                data: None,
            })
        });
    }
    io
}

fn args(p: Params) -> Vec<String> {
    match p {
        Params::Array(a) => {
            a.into_iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect()
        }
        _ => Vec::new(),
    }
}

fn list() -> String {
    let mut out = String::from("The available commands are:\n");
    for c in COMMANDS {
        out.push_str(&format!("  {:<24}{}\n", c.name, c.synopsis));
    }
    out
}

fn logs(c: &Context) -> Result<&dyn LogControl, String> {
    c.log.as_deref().ok_or_else(|| "log control is not available".to_string())
}

/// Resident set size from /proc, in kB.
fn rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn memory_show(s: &Shared) -> String {
    format!(
        "rss_kb:{} ports:{} sessions:{} migrations:{}\n",
        rss_kb().map(|k| k.to_string()).unwrap_or_else(|| "?".into()),
        s.cache.len(),
        s.metrics.sessions_open.get(),
        s.timelines.all().len()
    )
}

fn proxy_show(c: &Context) -> String {
    let (s, info) = (&c.shared, &c.info);
    let m = &s.metrics;
    let mut out = String::new();
    out.push_str(&format!("listeners: {}\n", info.listeners.join(" ")));
    out.push_str(&format!("upstream: {}\n", info.upstreams.join(",")));
    if let Some(u) = info.upstream_state.as_ref().filter(|u| u.remotes().len() > 1) {
        let leader = u.leader.as_ref().and_then(|t| t.leader()).map(|i| u.remotes()[i].to_string());
        out.push_str(&format!("cluster leader: {}\n", leader.unwrap_or_else(|| "(unknown)".into())));
    }
    let sb = if info.sb.is_empty() { "(not watched)".to_string() } else { info.sb.join(",") };
    out.push_str(&format!("southbound: {sb}\n"));
    out.push_str(&format!("sessions: {} open, {} total\n", m.sessions_open.get(), m.sessions.get()));
    let synced = if s.cache.is_synced() { "synchronised" } else { "not synchronised" };
    out.push_str(&format!("port cache: {} ports, {synced}\n", s.cache.len()));
    out.push_str(&format!("migrations in progress: {}\n", s.timelines.in_progress()));
    let unknown = s.timelines.unknown_source();
    if unknown > 0 {
        out.push_str(&format!("migrations whose source is unknown (left alone): {unknown}\n"));
    }
    out.push_str(&format!("dry run: {}, finalize on activation: {}\n", info.dry_run, s.finalize()));
    let active = if info.dry_run {
        "no (dry run)"
    } else if m.reconciler_lock_held.get() == 1 {
        "yes"
    } else {
        "no (another proxy holds the lock, or the database is not reached)"
    };
    out.push_str(&format!("active reconciler: {active}\n"));
    let queued = m.reconcile_queue.get();
    if queued > 0 {
        out.push_str(&format!("reconciler: {queued} fixes queued\n"));
    }
    out
}
