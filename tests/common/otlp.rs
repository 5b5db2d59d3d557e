//! OTLP metrics as a client encodes them: only the messages the tests need (the split by
//! resource attribute is tenantgate's; these build and read what a client would send).
use prost::Message;

// The resource and its attributes are tenantgate's own messages (the part it reads).
pub use tenantgate::push::otlp::{AnyValue, KeyValue, Resource};

#[derive(Clone, PartialEq, Message)]
pub struct Export {
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}
#[derive(Clone, PartialEq, Message)]
pub struct ResourceMetrics {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
}
#[derive(Clone, PartialEq, Message)]
pub struct ScopeMetrics {
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
}
#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "5")]
    pub gauge: Option<Gauge>,
}
#[derive(Clone, PartialEq, Message)]
pub struct Gauge {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
}
#[derive(Clone, PartialEq, Message)]
pub struct NumberDataPoint {
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    #[prost(double, tag = "4")]
    pub as_double: f64,
}

/// One resource per (service.namespace or none, metric name), each with a gauge point.
pub fn export(resources: &[(Option<&str>, &str)], now_ms: i64) -> Vec<u8> {
    Export {
        resource_metrics: resources
            .iter()
            .map(|(ns, metric)| ResourceMetrics {
                resource: Some(Resource {
                    attributes: ns
                        .iter()
                        .map(|ns| KeyValue {
                            key: "service.namespace".into(),
                            value: Some(AnyValue {
                                string_value: Some((*ns).into()),
                            }),
                        })
                        .chain([KeyValue {
                            key: "service.name".into(),
                            value: Some(AnyValue {
                                string_value: Some("split-test".into()),
                            }),
                        }])
                        .collect(),
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: (*metric).into(),
                        gauge: Some(Gauge {
                            data_points: vec![NumberDataPoint {
                                time_unix_nano: now_ms as u64 * 1_000_000,
                                as_double: 1.0,
                            }],
                        }),
                    }],
                }],
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Each resource's attributes and its metrics' names, as recorded series.
pub fn resources(raw: &[u8]) -> Vec<Vec<(String, String)>> {
    Export::decode(raw)
        .unwrap()
        .resource_metrics
        .into_iter()
        .map(|rm| {
            let mut v: Vec<(String, String)> = rm
                .resource
                .unwrap_or_default()
                .attributes
                .into_iter()
                .map(|kv| {
                    (
                        kv.key,
                        kv.value.and_then(|v| v.string_value).unwrap_or_default(),
                    )
                })
                .collect();
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    v.push(("metric".into(), m.name));
                }
            }
            v
        })
        .collect()
}
