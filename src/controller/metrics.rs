//! Prometheus metrics of the controller (prometheus-client, OpenMetrics text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `succeeded` or `failed`.
    pub result: String,
    /// Condition reason (`Succeeded`, `InvalidArchive`, …).
    pub reason: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub imports: Family<ResultLabels, Counter>,
    pub bytes_read: Counter,
    pub bytes_pushed: Counter,
    pub duration: Histogram,
    pub in_flight: Gauge,
    pub reconciliations: Counter,
    pub reconcile_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("imageimport");
        let imports = Family::<ResultLabels, Counter>::default();
        registry.register(
            "imports",
            "Finished imports by result and reason",
            imports.clone(),
        );
        let bytes_read = Counter::default();
        registry.register(
            "archive_bytes_read",
            "Archive bytes read by finished imports",
            bytes_read.clone(),
        );
        let bytes_pushed = Counter::default();
        registry.register(
            "bytes_pushed",
            "Blob bytes sent to registries by finished imports",
            bytes_pushed.clone(),
        );
        // 1 s to ~4.5 h.
        let duration = Histogram::new(exponential_buckets(1.0, 2.0, 15));
        registry.register(
            "import_duration_seconds",
            "Wall time of finished imports",
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "imports_in_flight",
            "Imports whose worker Job this controller last saw running",
            in_flight.clone(),
        );
        let reconciliations = Counter::default();
        registry.register("reconciliations", "Reconcile runs", reconciliations.clone());
        let reconcile_errors = Counter::default();
        registry.register(
            "reconcile_errors",
            "Reconcile runs that failed (API errors)",
            reconcile_errors.clone(),
        );
        for (result, reason) in FINISHED {
            let _ = imports.get_or_create(&ResultLabels {
                result: (*result).into(),
                reason: (*reason).into(),
            });
        }
        Metrics {
            registry,
            imports,
            bytes_read,
            bytes_pushed,
            duration,
            in_flight,
            reconciliations,
            reconcile_errors,
        }
    }
}

/// Reasons a finished import can have (`api::reason`): each `imageimport_imports_total`
/// series exists from start-up, at 0, so that rates and alerts see a series before the first
/// import of that outcome ends.
const FINISHED: &[(&str, &str)] = {
    use crate::api::reason::*;
    &[
        ("succeeded", SUCCEEDED),
        ("failed", WORKER_FAILED),
        ("failed", VERIFICATION_FAILED),
        ("failed", INVALID_ARCHIVE),
        ("failed", TAG_REQUIRED),
        ("failed", IMAGE_NOT_FOUND),
        ("failed", SOURCE_NOT_FOUND),
        ("failed", SOURCE_REFUSED),
        ("failed", SOURCE_UNAVAILABLE),
        ("failed", UNAUTHORIZED),
        ("failed", UNTRUSTED_CERTIFICATE),
        ("failed", REGISTRY_UNAVAILABLE),
        ("failed", INVALID_CONFIGURATION),
        ("failed", REGISTRY_REJECTED),
        ("failed", SECRET_NOT_FOUND),
        ("failed", CONFIG_MAP_NOT_FOUND),
        ("failed", POLICY_VIOLATION),
        ("failed", INVALID_SPEC),
        ("failed", INTERNAL_ERROR),
    ]
};

/// What one finished attempt adds to the metrics.
#[derive(Debug, Default)]
pub struct Finished<'a> {
    pub succeeded: bool,
    pub reason: &'a str,
    pub bytes_read: u64,
    pub bytes_pushed: u64,
    /// From the attempt's start to its end (or to when a lost worker was noticed).
    pub seconds: Option<f64>,
}

impl Metrics {
    /// Counts a finished attempt, a worker lost without a result included: its bytes read
    /// (as last reported) and its duration count too.
    pub fn finished(&self, f: Finished<'_>) {
        self.imports
            .get_or_create(&ResultLabels {
                result: if f.succeeded { "succeeded" } else { "failed" }.into(),
                reason: f.reason.into(),
            })
            .inc();
        self.bytes_read.inc_by(f.bytes_read);
        self.bytes_pushed.inc_by(f.bytes_pushed);
        if let Some(s) = f.seconds.filter(|s| *s >= 0.0) {
            self.duration.observe(s);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_series_exist_before_the_first_outcome() {
        let text = Metrics::default().encode();
        for line in [
            r#"imageimport_imports_total{result="succeeded",reason="Succeeded"} 0"#,
            r#"imageimport_imports_total{result="failed",reason="WorkerFailed"} 0"#,
            r#"imageimport_imports_total{result="failed",reason="InvalidArchive"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn a_lost_worker_counts_its_bytes_and_time() {
        let m = Metrics::default();
        m.finished(Finished {
            succeeded: false,
            reason: crate::api::reason::WORKER_FAILED,
            bytes_read: 1234,
            bytes_pushed: 0,
            seconds: Some(42.0),
        });
        let text = m.encode();
        assert!(
            text.contains("imageimport_archive_bytes_read_total 1234"),
            "{text}"
        );
        assert!(
            text.contains("imageimport_import_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"imageimport_imports_total{result="failed",reason="WorkerFailed"} 1"#),
            "{text}"
        );
    }
}
