//! The control socket's text: `migrations/list` and `migrations/show`.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{SourceOrigin, Timelines};

impl Timelines {
    /// `migrations/list`: one line per migration.
    pub fn render_list(&self, now: SystemTime) -> String {
        let mut out = String::new();
        let all = self.all();
        if all.is_empty() {
            return "no migrations\n".into();
        }
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<12} {:<12} {:<15} age",
            "port", "source", "destination", "phase", "sb"
        );
        for m in all.values() {
            let age = now.duration_since(m.started()).unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<24} {:<12} {:<12} {:<12} {:<15} {:.1}s",
                m.port,
                m.source.as_deref().unwrap_or("unknown"),
                m.destination,
                m.phase.as_str(),
                m.sb_state(),
                age.as_secs_f64()
            );
        }
        out
    }

    /// `migrations/show PORT`: the timeline of one port.
    pub fn render_show(&self, port: &str) -> Option<String> {
        let m = self.get(port)?;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "port {}: {} → {} ({})",
            m.port,
            m.source.as_deref().unwrap_or("unknown"),
            m.destination,
            m.phase.as_str()
        );
        let origin = match m.source_origin {
            Some(SourceOrigin::Tag) => "the source tag",
            Some(SourceOrigin::RequestedChassis) => "requested-chassis when the destination first appeared",
            Some(SourceOrigin::Southbound) => "the Southbound binding",
            None => "nowhere: no source tag, no requested-chassis, no Southbound binding elsewhere",
        };
        let _ = writeln!(out, "  source from {origin}");
        let start = m.started();
        for (stage, at) in &m.events {
            let since = at.duration_since(start).unwrap_or_default();
            let wall = at.duration_since(UNIX_EPOCH).unwrap_or_default();
            let _ = writeln!(
                out,
                "  +{:>9.1} ms  {:<22} (unix {}.{:03})",
                since.as_secs_f64() * 1000.0,
                stage.as_str(),
                wall.as_secs(),
                wall.subsec_millis()
            );
        }
        if let Some(b) = &m.binding {
            let _ = writeln!(
                out,
                "  sb: chassis={} additional={:?} requested={} requested-additional={:?} activated={:?} up={}",
                b.chassis.as_deref().unwrap_or("-"),
                b.additional_chassis,
                b.requested_chassis.as_deref().unwrap_or("-"),
                b.requested_additional_chassis,
                b.activated,
                b.up.map(|u| u.to_string()).unwrap_or_else(|| "-".into())
            );
        }
        Some(out)
    }
}
