//! Counters the proxy keeps, registered in one `prometheus-client` `Registry` owned by the
//! proxy (no globals). All names start with `ovn_nb_proxy_`; README.md lists each one. A metric
//! is declared once, in the table of `metrics!` below: its field, type, name and help.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// One label, e.g. `[("cause", "started")]`.
pub type Label = [(&'static str, &'static str); 1];

/// A counter by `direction`, with both directions at hand (the relay counts every message:
/// no label lookup on that path).
#[derive(Clone, Debug)]
pub struct Directed {
    pub c2s: Counter,
    pub s2c: Counter,
    family: Family<Label, Counter>,
}

impl Default for Directed {
    fn default() -> Self {
        let family = Family::<Label, Counter>::default();
        let c2s = family.get_or_create(&[("direction", "client_to_server")]).clone();
        let s2c = family.get_or_create(&[("direction", "server_to_client")]).clone();
        Directed { c2s, s2c, family }
    }
}

impl TypedMetric for Directed {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Directed {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.family.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Seconds a migration takes, tagged → single chassis again.
fn migration_buckets() -> Histogram {
    Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0].into_iter())
}

macro_rules! metrics {
    ($($field:ident: $ty:ty = $init:expr, $name:literal, $help:literal;)*) => {
        pub struct Metrics {
            $(#[doc = $help] pub $field: $ty,)*
            registry: Registry,
        }

        impl Metrics {
            pub fn new() -> Self {
                let mut registry = Registry::with_prefix("ovn_nb_proxy");
                $(let $field: $ty = $init; registry.register($name, $help, $field.clone());)*
                Metrics { $($field,)* registry }
            }
        }
    };
}

metrics! {
    sessions_open: Gauge = Gauge::default(), "client_sessions_open", "Client sessions open now";
    sessions: Counter = Counter::default(), "client_sessions", "Client sessions accepted";
    frame_too_large: Counter = Counter::default(), "frame_too_large",
        "Clients disconnected for a message over --max-frame-size";
    messages: Directed = Directed::default(), "messages", "Messages relayed, by direction";
    bytes: Directed = Directed::default(), "bytes", "Bytes relayed, by direction";
    transactions: Counter = Counter::default(), "transactions",
        "transact requests on Logical_Switch_Port planned by the policy";
    unparsed: Counter = Counter::default(), "unparsed",
        "Client messages on Logical_Switch_Port forwarded unparsed: no port migrating, no tag in the message";
    rewrites: Family<Label, Counter> = Family::default(), "rewrites",
        "Port rewrites made in client transactions, by cause";
    rewrites_refused: Counter = Counter::default(), "rewrites_refused",
        "Rewritten client transactions the server refused (the changes were not made)";
    rewrites_stale: Counter = Counter::default(), "rewrites_stale",
        "Changes the proxy appended that matched no row (its cache was behind): not made, left to the reconciler";
    rewrites_unconfirmed: Counter = Counter::default(), "rewrites_unconfirmed",
        "Rewritten client transactions whose reply the proxy never saw (client closed or cancelled)";
    sync_waits: Family<Label, Counter> = Family::default(), "sync_waits",
        "Client transactions on ports held until the port cache was synchronised, by outcome";
    skips: Family<Label, Counter> = Family::default(), "skips", "Tagged ports left alone, by reason";
    reconciles: Family<Label, Counter> = Family::default(), "reconciles", "Reconciler transactions, by outcome";
    monitor_resyncs: Counter = Counter::default(), "monitor_resyncs",
        "Initial monitor replies loaded into the port cache";
    monitor_stalls: Counter = Counter::default(), "monitor_stalls",
        "Monitor connections given up because the database stopped answering the proxy's probe";
    memory_trims: Counter = Counter::default(), "memory_trims",
        "Times the proxy gave the allocator's free memory back to the system, after big messages";
    reconcile_queue: Gauge = Gauge::default(), "reconcile_queue",
        "Reconciler fixes planned and not yet sent (the burst being paced)";
    upstream_reconnects: Counter = Counter::default(), "upstream_reconnects",
        "Reconnections of the proxy's own monitor connections after a loss";
    leader_changes: Counter = Counter::default(), "leader_changes", "Moves of the cluster leader seen by the proxy";
    reconciler_lock_held: Gauge = Gauge::default(), "reconciler_lock_held",
        "1 while this proxy holds the reconciler lock (is the active reconciler)";
    tls_handshake_failures: Counter = Counter::default(), "tls_handshake_failures",
        "Client TLS handshakes that failed (no or untrusted certificate, timeout)";
    migrations_in_progress: Gauge = Gauge::default(), "migrations_in_progress",
        "Ports whose tags say a migration is in progress";
    migrations_source_unknown: Gauge = Gauge::default(), "migrations_source_unknown",
        "Migrations in progress whose source chassis the proxy cannot know (left alone)";
    record_lines_dropped: Counter = Counter::default(), "record_lines_dropped",
        "Transcript lines dropped because the writer thread fell behind (--record)";
    migration_seconds: Histogram = migration_buckets(), "migration_duration_seconds",
        "Migrations from tagged to a single chassis again, as the Southbound shows them";
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
