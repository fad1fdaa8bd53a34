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

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode");
        out
    }
}
