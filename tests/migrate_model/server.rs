//! The in-test source and destination: remote read (samples) from both, remote write into the
//! destination, which can hold its Nth write, applied or not, while the test kills the process.

use super::*;

#[derive(Default)]
pub(crate) struct State {
    pub(crate) source: Store,
    pub(crate) dest: Store,
    /// How many times a write of the migration was accepted carrying each data sample.
    pub(crate) accepted: HashMap<(Labels, i64), u32>,
    /// Samples sent at a timestamp the destination held with another value.
    pub(crate) conflicts: u64,
    /// Writes received in the current run (the empty validation write and progress records
    /// included).
    pub(crate) writes: u64,
    /// Hold this write of the current run until released.
    pub(crate) hold_at: Option<u64>,
    /// Whether the held write is applied (it reached the destination before the kill).
    pub(crate) apply_held: bool,
    pub(crate) held: bool,
}

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) release: watch::Sender<u64>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub(crate) async fn start(state: State) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(state));
        let (release, _) = watch::channel(0u64);
        let (st, rel) = (state.clone(), release.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (st, rel) = (st.clone(), rel.clone());
                let svc =
                    hyper::service::service_fn(move |req| serve(req, st.clone(), rel.clone()));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        Server {
            addr,
            state,
            release,
            task,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn serve(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    release: watch::Sender<u64>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await?.to_bytes();
    let raw = wire::unsnappy(&body, 64 << 20).unwrap_or_else(|e| panic!("{path}: {e:?}"));
    let answer = |status: StatusCode, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r
    };
    match path.as_str() {
        "/src/read" | "/dst/read" => {
            let read = ReadRequest::decode(raw.as_slice()).unwrap();
            let st = state.lock().unwrap();
            let store = if path == "/src/read" {
                &st.source
            } else {
                &st.dest
            };
            let results = read
                .queries
                .iter()
                .map(|q| QueryResult {
                    timeseries: select(
                        store,
                        &q.matchers,
                        q.start_timestamp_ms,
                        q.end_timestamp_ms,
                    ),
                })
                .collect();
            let encoded = ReadResponse { results }.encode_to_vec();
            let mut r = answer(StatusCode::OK, wire::snappy(&encoded).unwrap().into());
            r.headers_mut()
                .insert("content-type", "application/x-protobuf".parse().unwrap());
            r.headers_mut()
                .insert("content-encoding", "snappy".parse().unwrap());
            Ok(r)
        }
        "/dst/write" => {
            let write = WriteRequest::decode(raw.as_slice()).unwrap();
            let mut released = release.subscribe();
            let seen = *released.borrow();
            let hold = {
                let mut st = state.lock().unwrap();
                st.writes += 1;
                let hold = st.hold_at == Some(st.writes);
                if hold {
                    st.held = true;
                }
                if !hold || st.apply_held {
                    apply(&mut st, &write);
                }
                hold
            };
            if hold {
                // Answered (to a killed process, or to a stopping one) once the test says so.
                // (Subscribed before `held` was set, so the release cannot come unseen.)
                let _ = released.wait_for(|g| *g > seen).await;
            }
            Ok(answer(StatusCode::NO_CONTENT, Bytes::new()))
        }
        _ => Ok(answer(StatusCode::NOT_FOUND, Bytes::new())),
    }
}

pub(crate) fn labels_of(ts: &TimeSeries) -> Labels {
    let mut l: Labels = ts
        .labels
        .iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect();
    l.sort();
    l
}

pub(crate) fn apply(st: &mut State, write: &WriteRequest) {
    for ts in &write.timeseries {
        let labels = labels_of(ts);
        let progress = labels
            .iter()
            .any(|(n, v)| n == "__name__" && v == PROGRESS_METRIC);
        for s in &ts.samples {
            let held = st.dest.entry(labels.clone()).or_default();
            match held.get(&s.timestamp) {
                Some(v) if v.to_bits() != s.value.to_bits() && !progress => st.conflicts += 1,
                _ => {
                    held.insert(s.timestamp, s.value);
                    if !progress {
                        *st.accepted
                            .entry((labels.clone(), s.timestamp))
                            .or_default() += 1;
                    }
                }
            }
        }
    }
}

pub(crate) fn matches(labels: &Labels, m: &LabelMatcher) -> bool {
    let value = labels
        .iter()
        .find(|(n, _)| *n == m.name)
        .map_or("", |(_, v)| v.as_str());
    match MatchType::try_from(m.r#type).unwrap() {
        MatchType::Eq => value == m.value,
        MatchType::Neq => value != m.value,
        MatchType::Re if m.value == ".+" => !value.is_empty(),
        MatchType::Re if m.value == ".*" => true,
        other => panic!("the model serves only the selectors migrate sends: {other:?} {m:?}"),
    }
}

/// Remote read's selection: matching series, samples in `[start, end]` (both inclusive).
pub(crate) fn select(
    store: &Store,
    matchers: &[LabelMatcher],
    start: i64,
    end: i64,
) -> Vec<TimeSeries> {
    store
        .iter()
        .filter(|(labels, _)| matchers.iter().all(|m| matches(labels, m)))
        .map(|(labels, samples)| TimeSeries {
            labels: labels
                .iter()
                .map(|(name, value)| Label {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            samples: samples
                .range(start..=end)
                .map(|(t, v)| Sample {
                    timestamp: *t,
                    value: *v,
                })
                .collect(),
        })
        .filter(|ts| !ts.samples.is_empty())
        .collect()
}
