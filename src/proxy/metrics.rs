//! Counters the proxy keeps, registered in one `prometheus-client` `Registry` owned by the
//! proxy (no globals). All names start with `ovn_nb_proxy_`; README.md documents each one.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// One label, e.g. `[("cause", "started")]`.
pub type Label = [(&'static str, &'static str); 1];

pub struct Metrics {
    pub sessions_open: Gauge,
    pub sessions: Counter,
    pub frame_too_large: Counter,
    pub transactions: Counter,
    pub unparsed: Counter,
    pub messages_c2s: Counter,
    pub messages_s2c: Counter,
    pub bytes_c2s: Counter,
    pub bytes_s2c: Counter,
    pub rewrites: Family<Label, Counter>,
    pub rewrites_refused: Counter,
    pub rewrites_stale: Counter,
    pub rewrites_unconfirmed: Counter,
    pub sync_waits: Family<Label, Counter>,
    pub skips: Family<Label, Counter>,
    pub reconciles: Family<Label, Counter>,
    pub monitor_resyncs: Counter,
    pub monitor_stalls: Counter,
    pub memory_trims: Counter,
    pub reconcile_queue: Gauge,
    pub upstream_reconnects: Counter,
    pub leader_changes: Counter,
    pub reconciler_lock_held: Gauge,
    pub tls_handshake_failures: Counter,
    pub migrations_in_progress: Gauge,
    pub migrations_source_unknown: Gauge,
    pub record_lines_dropped: Counter,
    /// Tagged → single chassis again, from the SB timeline (only with `--sb-db`).
    pub migration_seconds: Histogram,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            sessions_open: Gauge::default(),
            sessions: Counter::default(),
            frame_too_large: Counter::default(),
            transactions: Counter::default(),
            unparsed: Counter::default(),
            messages_c2s: Counter::default(),
            messages_s2c: Counter::default(),
            bytes_c2s: Counter::default(),
            bytes_s2c: Counter::default(),
            rewrites: Family::default(),
            rewrites_refused: Counter::default(),
            rewrites_stale: Counter::default(),
            rewrites_unconfirmed: Counter::default(),
            sync_waits: Family::default(),
            skips: Family::default(),
            reconciles: Family::default(),
            monitor_resyncs: Counter::default(),
            monitor_stalls: Counter::default(),
            memory_trims: Counter::default(),
            reconcile_queue: Gauge::default(),
            upstream_reconnects: Counter::default(),
            leader_changes: Counter::default(),
            reconciler_lock_held: Gauge::default(),
            tls_handshake_failures: Counter::default(),
            migrations_in_progress: Gauge::default(),
            migrations_source_unknown: Gauge::default(),
            record_lines_dropped: Counter::default(),
            migration_seconds: Histogram::new(
                [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0].into_iter(),
            ),
            registry: Registry::default(),
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics::default();
        let mut r = Registry::with_prefix("ovn_nb_proxy");
        r.register("client_sessions_open", "Client sessions open now", m.sessions_open.clone());
        r.register("client_sessions", "Client sessions accepted", m.sessions.clone());
        r.register(
            "frame_too_large",
            "Clients disconnected for a message over --max-frame-size",
            m.frame_too_large.clone(),
        );
        let messages = Family::<Label, Counter>::default();
        m.messages_c2s = messages.get_or_create(&[("direction", "client_to_server")]).clone();
        m.messages_s2c = messages.get_or_create(&[("direction", "server_to_client")]).clone();
        r.register("messages", "Messages relayed, by direction", messages);
        let bytes = Family::<Label, Counter>::default();
        m.bytes_c2s = bytes.get_or_create(&[("direction", "client_to_server")]).clone();
        m.bytes_s2c = bytes.get_or_create(&[("direction", "server_to_client")]).clone();
        r.register("bytes", "Bytes relayed, by direction", bytes);
        r.register(
            "transactions",
            "transact requests on Logical_Switch_Port planned by the policy",
            m.transactions.clone(),
        );
        r.register(
            "unparsed",
            "Client messages on Logical_Switch_Port forwarded unparsed: no port migrating, no tag in the message",
            m.unparsed.clone(),
        );
        r.register("rewrites", "Port rewrites made in client transactions, by cause", m.rewrites.clone());
        r.register(
            "rewrites_refused",
            "Rewritten client transactions the server refused (the changes were not made)",
            m.rewrites_refused.clone(),
        );
        r.register(
            "rewrites_stale",
            "Changes the proxy appended that matched no row (its cache was behind): not made, left to the reconciler",
            m.rewrites_stale.clone(),
        );
        r.register(
            "rewrites_unconfirmed",
            "Rewritten client transactions whose reply the proxy never saw (client closed or cancelled)",
            m.rewrites_unconfirmed.clone(),
        );
        r.register(
            "sync_waits",
            "Client transactions on ports held until the port cache was synchronised, by outcome",
            m.sync_waits.clone(),
        );
        r.register("skips", "Tagged ports left alone, by reason", m.skips.clone());
        r.register("reconciles", "Reconciler transactions, by outcome", m.reconciles.clone());
        r.register(
            "monitor_resyncs",
            "Initial monitor replies loaded into the port cache",
            m.monitor_resyncs.clone(),
        );
        r.register(
            "monitor_stalls",
            "Monitor connections given up because the database stopped answering the proxy's probe",
            m.monitor_stalls.clone(),
        );
        r.register(
            "memory_trims",
            "Times the proxy gave the allocator's free memory back to the system, after big messages",
            m.memory_trims.clone(),
        );
        r.register(
            "reconcile_queue",
            "Reconciler fixes planned and not yet sent (the burst being paced)",
            m.reconcile_queue.clone(),
        );
        r.register(
            "upstream_reconnects",
            "Reconnections of the proxy's own monitor connections after a loss",
            m.upstream_reconnects.clone(),
        );
        r.register(
            "leader_changes",
            "Moves of the cluster leader seen by the proxy",
            m.leader_changes.clone(),
        );
        r.register(
            "reconciler_lock_held",
            "1 while this proxy holds the reconciler lock (is the active reconciler)",
            m.reconciler_lock_held.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Client TLS handshakes that failed (no or untrusted certificate, timeout)",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "migrations_in_progress",
            "Ports whose tags say a migration is in progress",
            m.migrations_in_progress.clone(),
        );
        r.register(
            "migrations_source_unknown",
            "Migrations in progress whose source chassis the proxy cannot know (left alone)",
            m.migrations_source_unknown.clone(),
        );
        r.register(
            "record_lines_dropped",
            "Transcript lines dropped because the writer thread fell behind (--record)",
            m.record_lines_dropped.clone(),
        );
        r.register(
            "migration_duration_seconds",
            "Migrations from tagged to a single chassis again, as the Southbound shows them",
            m.migration_seconds.clone(),
        );
        m.registry = r;
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
