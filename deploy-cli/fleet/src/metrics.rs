//! The agent's Prometheus metrics (OpenMetrics text at `http://[fleet] metrics_listen/metrics`):
//!
//! ```text
//! osdeploy_booted{commit,version}                 1 for the release the node runs
//! osdeploy_update_phase{commit,phase}             1 while an update is in flight, in that phase
//! osdeploy_fleet_halted                           1 while the fleet's halt switch is set
//! osdeploy_last_pull_bytes, _last_pull_requests  what the last pull fetched
//! osdeploy_last_poll_timestamp_seconds            when the agent last asked the origin
//! osdeploy_updates_total{outcome}                 updates ended: updated, rolled-back
//! osdeploy_step_errors_total                      steps that failed and are retried (etcd, origin, hooks)
//! osdeploy_reboot_slot_wait_seconds_total         time spent waiting in the reboot queue
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{FleetError, Result};

type Labels = Vec<(&'static str, String)>;

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The release the node runs.
    pub booted: Family<Labels, Gauge>,
    /// The update in flight and its phase.
    pub phase: Family<Labels, Gauge>,
    /// The fleet's halt switch.
    pub halted: Gauge,
    /// Bytes the last pull fetched.
    pub pull_bytes: Gauge,
    /// Requests the last pull made.
    pub pull_requests: Gauge,
    /// When the agent last polled (seconds since the epoch).
    pub last_poll: Gauge,
    /// Updates ended, by outcome.
    pub updates: Family<Labels, Counter>,
    /// Steps that failed (and are retried).
    pub step_errors: Counter,
    /// Seconds spent waiting for a reboot slot.
    pub slot_wait: Counter<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("osdeploy");
        let metrics = Metrics {
            booted: Family::default(),
            phase: Family::default(),
            halted: Gauge::default(),
            pull_bytes: Gauge::default(),
            pull_requests: Gauge::default(),
            last_poll: Gauge::default(),
            updates: Family::default(),
            step_errors: Counter::default(),
            slot_wait: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("booted", "The release the node runs (value 1)", metrics.booted.clone());
        registry.register("update_phase", "The update in flight and its phase (value 1)", metrics.phase.clone());
        registry.register("fleet_halted", "1 while the fleet's halt switch is set", metrics.halted.clone());
        registry.register("last_pull_bytes", "Bytes the last pull fetched", metrics.pull_bytes.clone());
        registry.register("last_pull_requests", "HTTP requests the last pull made", metrics.pull_requests.clone());
        registry.register(
            "last_poll_timestamp_seconds",
            "When the agent last asked the origin for a release",
            metrics.last_poll.clone(),
        );
        registry.register("updates", "Updates ended, by outcome", metrics.updates.clone());
        registry.register("step_errors", "Agent steps that failed and are retried", metrics.step_errors.clone());
        registry.register(
            "reboot_slot_wait_seconds",
            "Time spent waiting in the reboot queue",
            metrics.slot_wait.clone(),
        );
        Metrics { registry, ..metrics }
    }
}

impl Metrics {
    /// Sets the booted release.
    pub fn set_booted(&self, commit: &str, version: &str) {
        self.booted.clear();
        self.booted.get_or_create(&vec![("commit", commit.to_owned()), ("version", version.to_owned())]).set(1);
    }

    /// Sets the update in flight (`None`: idle).
    pub fn set_phase(&self, update: Option<(&str, &str)>) {
        self.phase.clear();
        if let Some((commit, phase)) = update {
            self.phase.get_or_create(&vec![("commit", commit.to_owned()), ("phase", phase.to_owned())]).set(1);
        }
    }

    /// The OpenMetrics text.
    pub fn text(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing into a String does not fail");
        text
    }
}

/// Serves `metrics` at `http://ADDR/metrics` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| FleetError::Io { path: format!("metrics_listen {addr}").into(), error })?;
    let app =
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.text())
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics server: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_every_metric_with_its_labels() {
        let metrics = Metrics::default();
        metrics.set_booted("c0ffee", "42");
        metrics.set_booted("beef", "43");
        metrics.set_phase(Some(("beef", "queued")));
        metrics.halted.set(1);
        metrics.updates.get_or_create(&vec![("outcome", "updated".to_owned())]).inc();
        metrics.slot_wait.inc_by(1.5);
        let text = metrics.text();
        for line in [
            "osdeploy_booted{commit=\"beef\",version=\"43\"} 1",
            "osdeploy_update_phase{commit=\"beef\",phase=\"queued\"} 1",
            "osdeploy_fleet_halted 1",
            "osdeploy_updates_total{outcome=\"updated\"} 1",
            "osdeploy_reboot_slot_wait_seconds_total 1.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("c0ffee"), "the old release is gone:\n{text}");
    }
}
