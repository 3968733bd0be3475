//! Counters of the controller's own subsystems (the ADS server keeps its own), and their
//! Prometheus text rendering for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by the bottom-up sync and the WebSub hub.
#[derive(Debug, Default)]
pub struct Metrics {
    /// 1 while the control channel to the API Manager is up.
    pub apim_connected: AtomicU64,
    /// Syncs that ended in `success`.
    pub apim_syncs_succeeded: AtomicU64,
    /// Syncs that ended in `failed`.
    pub apim_syncs_failed: AtomicU64,
    /// Events accepted by the hub.
    pub websub_events_published: AtomicU64,
    /// Events delivered to a subscriber.
    pub websub_deliveries: AtomicU64,
    /// Delivery attempts that failed (and will be retried or given up).
    pub websub_delivery_failures: AtomicU64,
    /// Events given up for a subscriber after the last attempt.
    pub websub_deliveries_dropped: AtomicU64,
}

/// Values read at scrape time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    /// REST APIs by sync status: pending, success, failed.
    pub apis_pending: u64,
    /// Synced APIs.
    pub apis_synced: u64,
    /// APIs whose last sync failed.
    pub apis_failed: u64,
    /// Active WebSub subscriptions.
    pub websub_subscriptions: u64,
    /// Deliveries still owed to subscribers.
    pub websub_pending_deliveries: u64,
}

/// Increments `c`.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The counters and `g` in Prometheus text exposition format.
    pub fn prometheus(&self, g: &Gauges) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut line = |kind: &str, name: &str, labels: &str, v: u64| {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name}{labels} {v}");
        };
        line(
            "gauge",
            "gateway_apim_connected",
            "",
            get(&self.apim_connected),
        );
        line(
            "counter",
            "gateway_apim_syncs_succeeded_total",
            "",
            get(&self.apim_syncs_succeeded),
        );
        line(
            "counter",
            "gateway_apim_syncs_failed_total",
            "",
            get(&self.apim_syncs_failed),
        );
        line("gauge", "gateway_apim_apis_pending", "", g.apis_pending);
        line("gauge", "gateway_apim_apis_synced", "", g.apis_synced);
        line("gauge", "gateway_apim_apis_failed", "", g.apis_failed);
        line(
            "counter",
            "gateway_websub_events_published_total",
            "",
            get(&self.websub_events_published),
        );
        line(
            "counter",
            "gateway_websub_deliveries_total",
            "",
            get(&self.websub_deliveries),
        );
        line(
            "counter",
            "gateway_websub_delivery_failures_total",
            "",
            get(&self.websub_delivery_failures),
        );
        line(
            "counter",
            "gateway_websub_deliveries_dropped_total",
            "",
            get(&self.websub_deliveries_dropped),
        );
        line(
            "gauge",
            "gateway_websub_subscriptions",
            "",
            g.websub_subscriptions,
        );
        line(
            "gauge",
            "gateway_websub_pending_deliveries",
            "",
            g.websub_pending_deliveries,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        inc(&m.websub_deliveries);
        inc(&m.websub_deliveries);
        let text = m.prometheus(&Gauges {
            websub_subscriptions: 3,
            ..Default::default()
        });
        assert!(
            text.contains("gateway_websub_deliveries_total 2\n"),
            "{text}"
        );
        assert!(text.contains("gateway_websub_subscriptions 3\n"), "{text}");
        assert!(text.contains("# TYPE gateway_apim_connected gauge\ngateway_apim_connected 0\n"));
    }
}
