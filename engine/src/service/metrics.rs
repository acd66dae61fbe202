//! The agent's Prometheus metrics (`/metrics`), through `prometheus-client`,
//! fed by its children's typed events (`crate::events`) and its own view of
//! the host. Names and meanings: `docs/service.md#metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::events::Event;

/// A VM's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VmLabel {
    /// The VM's name.
    pub vm: String,
}

/// A host resource's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    /// This host.
    pub host: String,
    /// `capacity` or `committed`.
    pub state: String,
}

fn latency() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(50e-6, 2.0, 16))
}

/// Every metric the agent serves.
pub struct Metrics {
    registry: Registry,
    epochs: Family<VmLabel, Counter>,
    pause: Family<VmLabel, Histogram, fn() -> Histogram>,
    ack: Family<VmLabel, Histogram, fn() -> Histogram>,
    raw: Family<VmLabel, Counter>,
    wire: Family<VmLabel, Counter>,
    dirty: Family<VmLabel, Counter>,
    lag: Family<VmLabel, Gauge>,
    protected: Family<VmLabel, Gauge>,
    failovers: Family<VmLabel, Counter>,
    spares: Family<VmLabel, Gauge>,
    host_mem: Family<HostLabel, Gauge>,
    host_vcpus: Family<HostLabel, Gauge>,
    children: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("hotspare");
        let m = Metrics {
            epochs: Family::default(),
            pause: Family::new_with_constructor(latency as fn() -> Histogram),
            ack: Family::new_with_constructor(latency as fn() -> Histogram),
            raw: Family::default(),
            wire: Family::default(),
            dirty: Family::default(),
            lag: Family::default(),
            protected: Family::default(),
            failovers: Family::default(),
            spares: Family::default(),
            host_mem: Family::default(),
            host_vcpus: Family::default(),
            children: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "epochs",
            "Epochs captured and sent by the VM's primary",
            m.epochs.clone(),
        );
        r.register(
            "pause_seconds",
            "The guest's pause per epoch",
            m.pause.clone(),
        );
        r.register(
            "ack_seconds",
            "From an epoch's send to a synchronous spare's commit",
            m.ack.clone(),
        );
        r.register("bytes_raw", "Epoch bytes before encoding", m.raw.clone());
        r.register("bytes_wire", "Epoch bytes on the wire", m.wire.clone());
        r.register("dirty_pages", "Dirty pages captured", m.dirty.clone());
        r.register(
            "spare_lag_epochs",
            "How far the furthest asynchronous spare lags",
            m.lag.clone(),
        );
        r.register(
            "protected",
            "1 while a synchronous spare protects the VM",
            m.protected.clone(),
        );
        r.register(
            "failovers",
            "Takeovers of this VM seen by this host",
            m.failovers.clone(),
        );
        r.register(
            "spares",
            "Spares protecting the VM (from its primary)",
            m.spares.clone(),
        );
        r.register(
            "host_mem_mib",
            "This host's memory for VMs",
            m.host_mem.clone(),
        );
        r.register(
            "host_vcpus",
            "This host's vCPUs for VMs",
            m.host_vcpus.clone(),
        );
        r.register(
            "host_children",
            "VMM processes this agent supervises",
            m.children.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Folds one of a VM's events in.
    pub fn event(&self, vm: &str, e: &Event) {
        let l = VmLabel { vm: vm.to_string() };
        match e {
            Event::Epoch {
                pause_us,
                pages,
                raw_bytes,
                wire_bytes,
                acks_us,
                async_lag,
                ..
            } => {
                self.epochs.get_or_create(&l).inc();
                self.pause
                    .get_or_create(&l)
                    .observe(*pause_us as f64 * 1e-6);
                self.raw.get_or_create(&l).inc_by(*raw_bytes);
                self.wire.get_or_create(&l).inc_by(*wire_bytes);
                self.dirty.get_or_create(&l).inc_by(*pages);
                let ack = self.ack.get_or_create(&l);
                for a in acks_us {
                    ack.observe(*a as f64 * 1e-6);
                }
                if let Some(lag) = async_lag {
                    self.lag.get_or_create(&l).set(*lag as i64);
                }
            }
            Event::Protected { .. } => {
                self.protected.get_or_create(&l).set(1);
            }
            Event::Unprotected { .. } => {
                self.protected.get_or_create(&l).set(0);
            }
            Event::TookOver { .. } => {
                self.failovers.get_or_create(&l).inc();
                self.protected.get_or_create(&l).set(0);
            }
            _ => {}
        }
    }

    /// Sets how many spares protect a VM.
    pub fn spares(&self, vm: &str, n: usize) {
        self.spares
            .get_or_create(&VmLabel { vm: vm.to_string() })
            .set(n as i64);
    }

    /// Forgets a VM no longer on this host.
    pub fn remove_vm(&self, vm: &str) {
        let l = VmLabel { vm: vm.to_string() };
        for f in [&self.lag, &self.protected, &self.spares] {
            f.remove(&l);
        }
    }

    /// This host's resources and children.
    pub fn host(&self, host: &str, capacity: (u64, u32), committed: (u64, u32), children: usize) {
        let l = |state: &str| HostLabel {
            host: host.to_string(),
            state: state.to_string(),
        };
        self.host_mem
            .get_or_create(&l("capacity"))
            .set(capacity.0 as i64);
        self.host_mem
            .get_or_create(&l("committed"))
            .set(committed.0 as i64);
        self.host_vcpus
            .get_or_create(&l("capacity"))
            .set(capacity.1 as i64);
        self.host_vcpus
            .get_or_create(&l("committed"))
            .set(committed.1 as i64);
        self.children.set(children as i64);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_metrics() {
        let m = Metrics::new();
        let ep = Event::Epoch {
            seq: 1,
            full: false,
            pause_us: 800,
            pages: 10,
            raw_bytes: 40960,
            wire_bytes: 9000,
            acks_us: vec![1500, 2500],
            async_lag: Some(3),
        };
        m.event("web", &ep);
        m.event("web", &ep);
        m.event(
            "web",
            &Event::Protected {
                spare: "x".into(),
                epoch: 1,
            },
        );
        m.host("h1", (4096, 8), (512, 1), 2);
        let t = m.render();
        for want in [
            "hotspare_epochs_total{vm=\"web\"} 2",
            "hotspare_bytes_wire_total{vm=\"web\"} 18000",
            "hotspare_dirty_pages_total{vm=\"web\"} 20",
            "hotspare_pause_seconds_count{vm=\"web\"} 2",
            "hotspare_ack_seconds_count{vm=\"web\"} 4",
            "hotspare_spare_lag_epochs{vm=\"web\"} 3",
            "hotspare_protected{vm=\"web\"} 1",
            "hotspare_host_mem_mib{host=\"h1\",state=\"committed\"} 512",
            "hotspare_host_children 2",
        ] {
            assert!(t.contains(want), "{want:?} missing from:\n{t}");
        }
    }
}
