//! Prices for `--expander=price`: a node's group's `price-per-hour` times the hours, and a pod's
//! requests times hourly rates per core and per GiB (configured, or derived from the cheapest
//! node group).

use super::{Provider, ProviderError, Result};
use crate::provider::NodeRef;

impl Provider {
    /// True when every node group has a `price-per-hour` (pricing answers are on).
    pub fn pricing_enabled(&self) -> bool {
        let config = self.config();
        let groups = &config.node_groups;
        !groups.is_empty() && groups.iter().all(|g| g.price_per_hour.is_some())
    }

    /// What running `node` from `start` to `end` costs: its group's `price-per-hour` times the
    /// hours. The group comes from the node's `kamatera.com/node-group` label (template nodes),
    /// else from the instance it matches.
    pub fn node_price(
        &self,
        node: &NodeRef,
        start: jiff::Timestamp,
        end: jiff::Timestamp,
    ) -> Result<f64> {
        let hours = hours_between(start, end)?;
        let group = if !node.group_label.is_empty() {
            self.group(&node.group_label).ok()
        } else {
            let st = self.lock();
            self.find_instance(&st, node)
                .and_then(|i| self.group(&i.group).ok())
        };
        let g = group.ok_or_else(|| ProviderError::UnknownNode { node: node.clone() })?;
        let price = g.price_per_hour.ok_or_else(|| ProviderError::NoPrice {
            group: g.name.clone(),
        })?;
        Ok(price.0 * hours)
    }

    /// What running a pod that requests `cpu` cores and `memory_bytes` costs from `start` to
    /// `end`: `pod-price-per-cpu-hour` / `pod-price-per-gib-hour`, or rates derived from the
    /// cheapest node group (half of its hourly price per core, half per GiB).
    pub fn pod_price(
        &self,
        cpu: f64,
        memory_bytes: f64,
        start: jiff::Timestamp,
        end: jiff::Timestamp,
    ) -> Result<f64> {
        let hours = hours_between(start, end)?;
        let (per_cpu, per_gib) = self.pod_rates();
        let gib = memory_bytes / (1024.0 * 1024.0 * 1024.0);
        Ok((cpu.max(0.0) * per_cpu + gib.max(0.0) * per_gib) * hours)
    }

    /// The hourly price of one core and of one GiB for pods.
    pub fn pod_rates(&self) -> (f64, f64) {
        let cfg = self.config();
        let cfg = &*cfg;
        if let Some(p) = cfg.pod_prices {
            return (p.per_cpu_hour.0, p.per_gib_hour.0);
        }
        let mut per_cpu = f64::INFINITY;
        let mut per_gib = f64::INFINITY;
        for g in &cfg.node_groups {
            let Some(price) = g.price_per_hour else {
                continue;
            };
            let cores = f64::from(g.server.cpu_cores().max(1));
            let gib = (f64::from(g.server.ram_mb) / 1024.0).max(1.0 / 1024.0);
            per_cpu = per_cpu.min(price.0 / 2.0 / cores);
            per_gib = per_gib.min(price.0 / 2.0 / gib);
        }
        if per_cpu.is_finite() && per_gib.is_finite() {
            (per_cpu, per_gib)
        } else {
            (0.0, 0.0)
        }
    }
}

/// Hours from `start` to `end`; an end before the start is the caller's mistake.
fn hours_between(start: jiff::Timestamp, end: jiff::Timestamp) -> Result<f64> {
    let d = end.duration_since(start);
    if d.is_negative() {
        return Err(ProviderError::EndBeforeStart { start, end });
    }
    Ok(d.as_secs_f64() / 3600.0)
}
