//! Metric handles cached per route and per tenant, so that recording a request touches its
//! counters directly instead of hashing a label set and locking a family map for each metric.
//!
//! A [`RouteHandles`] is made once per route of a loaded config (lazily, by the first request
//! the route serves). Its handles are clones of the families' own series (a prometheus-client
//! metric is a shared atomic), so a reload that rebuilds the route keeps counting into the same
//! series. Label values stay what they were: route names and tenants the config bounds.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, RwLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::metrics::{EmulatedLabels, Metrics, RequestLabels, RouteLabels, RouteTenantLabels};

/// How many distinct entries a small cache keeps before it leaves the rest to the family map:
/// a linear scan beats hashing for a handful, and a route with many tenants still works.
const SMALL: usize = 16;

/// A short list of handles, looked up by a linear scan under a read lock (uncontended on the
/// hot path: it is written only when a new key is first seen).
struct SmallCache<K, V> {
    entries: RwLock<Vec<(K, V)>>,
}

impl<K, V: Clone> SmallCache<K, V> {
    fn new() -> Self {
        SmallCache {
            entries: RwLock::new(Vec::new()),
        }
    }

    /// The value for the first key `matches` accepts, or `make`'s, which is remembered while
    /// there is room.
    fn get(
        &self,
        matches: impl Fn(&K) -> bool,
        key: impl FnOnce() -> K,
        make: impl FnOnce() -> V,
    ) -> V {
        {
            let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
            if let Some((_, v)) = entries.iter().find(|(k, _)| matches(k)) {
                return v.clone();
            }
        }
        let v = make();
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() < SMALL && !entries.iter().any(|(k, _)| matches(k)) {
            entries.push((key(), v.clone()));
        }
        v
    }
}

/// The handles of one route's series.
pub struct RouteHandles {
    metrics: Arc<Metrics>,
    route: Arc<str>,
    pub in_flight: Gauge,
    pub request_bytes: Counter,
    pub response_bytes: Counter,
    tenants: SmallCache<Arc<str>, Arc<TenantHandles>>,
    /// `tenantgate_emulated_requests_total` by endpoint.
    emulated: SmallCache<&'static str, Counter>,
    /// Made by the first sidecar read, so the series exists only for routes a sidecar reads.
    sidecar_last_seen: OnceLock<Gauge<f64, AtomicU64>>,
}

impl std::fmt::Debug for RouteHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteHandles")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// The handles of one route and tenant's series.
pub struct TenantHandles {
    pub duration: Histogram,
    /// `tenantgate_requests_total` by method and status code.
    requests: SmallCache<(&'static str, u16), Counter>,
    labels: RouteTenantLabels,
}

impl RouteHandles {
    pub fn new(metrics: &Arc<Metrics>, route: &Arc<str>) -> Self {
        let labels = RouteLabels {
            route: route.clone(),
        };
        RouteHandles {
            metrics: metrics.clone(),
            route: route.clone(),
            in_flight: metrics.in_flight.get_or_create(&labels).clone(),
            request_bytes: metrics.request_bytes.get_or_create(&labels).clone(),
            response_bytes: metrics.response_bytes.get_or_create(&labels).clone(),
            tenants: SmallCache::new(),
            emulated: SmallCache::new(),
            sidecar_last_seen: OnceLock::new(),
        }
    }

    /// Counts a request answered from config by `endpoint`.
    pub fn emulated(&self, endpoint: &'static str) {
        self.emulated
            .get(
                |&e| e == endpoint,
                || endpoint,
                || {
                    self.metrics
                        .emulated
                        .get_or_create(&EmulatedLabels {
                            route: self.route.clone(),
                            endpoint,
                        })
                        .clone()
                },
            )
            .inc();
    }

    /// Records that a sidecar read this route's config now.
    pub fn sidecar_seen(&self) {
        self.sidecar_last_seen
            .get_or_init(|| {
                self.metrics
                    .sidecar_last_seen
                    .get_or_create(&RouteLabels {
                        route: self.route.clone(),
                    })
                    .clone()
            })
            .set(crate::time::now_millis() as f64 / 1000.0);
    }

    pub fn route(&self) -> &Arc<str> {
        &self.route
    }

    /// The handles for `tenant` on this route. Tenants are compared by pointer first: a route's
    /// configured tenant is one shared string, so the usual lookup compares no bytes.
    pub fn tenant(&self, tenant: &Arc<str>) -> Arc<TenantHandles> {
        self.tenants.get(
            |t| Arc::ptr_eq(t, tenant) || **t == **tenant,
            || tenant.clone(),
            || {
                let labels = RouteTenantLabels {
                    route: self.route.clone(),
                    tenant: tenant.clone(),
                };
                Arc::new(TenantHandles {
                    duration: self.metrics.duration.get_or_create(&labels).clone(),
                    requests: SmallCache::new(),
                    labels,
                })
            },
        )
    }

    /// `tenantgate_requests_total` for this route, `tenant`, `method` and `code`.
    pub fn requests(&self, tenant: &TenantHandles, method: &'static str, code: u16) -> Counter {
        tenant.requests.get(
            |&(m, c)| c == code && m == method,
            || (method, code),
            || {
                self.metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        route: tenant.labels.route.clone(),
                        tenant: tenant.labels.tenant.clone(),
                        method,
                        code,
                    })
                    .clone()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_handles_count_into_the_families_series() {
        let m = Arc::new(Metrics::new());
        let route: Arc<str> = Arc::from("r");
        let h = RouteHandles::new(&m, &route);
        // A tenant equal by value but not by pointer finds the same handles.
        let t1 = h.tenant(&Arc::from("t"));
        let t2 = h.tenant(&Arc::from("t"));
        assert!(Arc::ptr_eq(&t1, &t2));
        h.requests(&t1, "GET", 200).inc();
        h.requests(&t2, "GET", 200).inc();
        h.requests(&t1, "GET", 404).inc();
        t1.duration.observe(0.5);
        h.in_flight.inc();
        // A second set of handles (a reloaded route) shares the same series.
        let again = RouteHandles::new(&m, &route);
        let t3 = again.tenant(&Arc::from("t"));
        again.requests(&t3, "GET", 200).inc();
        let text = m.encode();
        for line in [
            r#"tenantgate_requests_total{route="r",tenant="t",method="GET",code="200"} 3"#,
            r#"tenantgate_requests_total{route="r",tenant="t",method="GET",code="404"} 1"#,
            r#"tenantgate_request_duration_seconds_count{route="r",tenant="t"} 1"#,
            r#"tenantgate_requests_in_flight{route="r"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn tenants_past_the_small_cache_are_still_counted() {
        let m = Arc::new(Metrics::new());
        let h = RouteHandles::new(&m, &Arc::from("r"));
        for round in 0..2 {
            for i in 0..(SMALL + 5) {
                let t = h.tenant(&Arc::from(format!("t{i}").as_str()));
                h.requests(&t, "POST", 204).inc();
            }
            let text = m.encode();
            let want = format!(
                r#"tenantgate_requests_total{{route="r",tenant="t{}",method="POST",code="204"}} {}"#,
                SMALL + 4,
                round + 1
            );
            assert!(text.lines().any(|l| l == want), "no {want:?} in:\n{text}");
        }
    }
}
