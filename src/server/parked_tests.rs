//! Tests of [`super`]: a kept-alive connection is parked between requests and served again.

use super::*;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::app::{App, AppOptions, ConnInfo};
use crate::config::{Overrides, from_yaml};

/// A socket that counts the parks: waits for readability (which only a parked connection
/// does) that follow a read.
struct Counting {
    inner: TcpStream,
    waits: Arc<AtomicUsize>,
    read: std::sync::atomic::AtomicBool,
}

impl ReadReady for Counting {
    fn poll_read_ready(&self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        if self.read.swap(false, Ordering::Relaxed) {
            self.waits.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.poll_read_ready(cx)
    }
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.read.store(true, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

const LIMITS: Limits = Limits {
    header_read: Duration::from_secs(5),
    idle: Duration::from_secs(60),
    body: conn::BodyPace {
        idle: Duration::from_secs(5),
        min_rate: 0,
        grace: Duration::from_secs(10),
    },
    send: Duration::from_secs(5),
};

/// One connection served by [`serve`] (the upstream refuses, so each answer is a 502), the
/// client's end, and the count of parked waits.
async fn served() -> (TcpStream, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    // One connection open of one: more than none, so always crowded.
    served_above(0).await
}

/// [`served`], parking only with more than `above` connections open (one is).
async fn served_above(above: usize) -> (TcpStream, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let yaml = "upstreams:\n  a: { url: \"http://127.0.0.1:1\" }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: a, tenant: t }\n";
    let config = from_yaml(yaml, "test.yaml", &Overrides::default()).unwrap();
    let app = App::new(config, AppOptions { access_log: false }).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, remote) = listener.accept().await.unwrap();
    let waits = Arc::new(AtomicUsize::new(0));
    let stream = Counting {
        inner: server,
        waits: waits.clone(),
        read: Default::default(),
    };
    let task = tokio::spawn(async move {
        let (_stop_tx, stop) = watch::channel(false);
        let activity = AtomicU64::new(0);
        let close = Notify::new();
        let parking = Parking::new();
        let h1 = http1::Builder::new();
        let activity_arc = Arc::new(AtomicU64::new(0));
        let service = DataService::new(
            app,
            Arc::new(ConnInfo::new(remote, false, None)),
            LIMITS.body,
            activity_arc,
            Some(parking.clone()),
        );
        let crowd = Crowd::new(Arc::new(tokio::sync::Semaphore::new(0)), 1, above);
        let cx = Serving {
            h1: &h1,
            stop,
            limits: &LIMITS,
            activity: &activity,
            close: &close,
            crowd: &crowd,
        };
        let io = Watched::new(stream, parking.clone());
        let _ = serve(Bytes::new(), io, service, parking, cx).await;
    });
    (client, waits, task)
}

/// Reads one whole response (it has a `content-length`) and returns its head.
async fn response(s: &mut TcpStream, pending: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("a content-length")
                .parse()
                .unwrap();
            if pending.len() >= end + 4 + len {
                pending.drain(..end + 4 + len);
                return head;
            }
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before the answer was complete");
        pending.extend_from_slice(&buf[..n]);
    }
}

const REQUEST: &[u8] = b"GET /api/v1/labels HTTP/1.1\r\nHost: x\r\n\r\n";

/// Polls until the connection has been parked more than `before` times.
async fn parked(waits: &AtomicUsize, before: usize) {
    for _ in 0..500 {
        if waits.load(Ordering::Relaxed) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the idle connection was never parked");
}

#[tokio::test]
async fn an_idle_connection_is_parked_and_served_again() {
    let (mut client, waits, _task) = served().await;
    let mut pending = Vec::new();
    for round in 0..3 {
        let before = waits.load(Ordering::Relaxed);
        client.write_all(REQUEST).await.unwrap();
        let head = response(&mut client, &mut pending).await;
        assert!(head.starts_with("HTTP/1.1 502"), "round {round}: {head}");
        assert!(!head.contains("connection: close"), "{head}");
        parked(&waits, before).await;
    }
    // The first bytes of a head wake the parked connection; hyper keeps it (not idle with
    // half a head read) until the rest comes.
    let before = waits.load(Ordering::Relaxed);
    client.write_all(&REQUEST[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        waits.load(Ordering::Relaxed),
        before,
        "parked with half a head"
    );
    client.write_all(&REQUEST[10..]).await.unwrap();
    let head = response(&mut client, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    parked(&waits, before).await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_parks() {
    let (mut client, waits, _task) = served().await;
    let mut pending = Vec::new();
    let mut three = REQUEST.repeat(2);
    // The third request's head is cut: hyper parks (or not) with part of it read.
    three.extend_from_slice(&REQUEST[..20]);
    client.write_all(&three).await.unwrap();
    for _ in 0..2 {
        let head = response(&mut client, &mut pending).await;
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.write_all(&REQUEST[20..]).await.unwrap();
    let head = response(&mut client, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    parked(&waits, 0).await;
}

#[tokio::test]
async fn a_connection_the_client_closes_is_never_parked() {
    let (mut client, waits, task) = served().await;
    client
        .write_all(b"GET /api/v1/labels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut all))
        .await
        .expect("closed after the answer")
        .unwrap();
    assert!(all.starts_with(b"HTTP/1.1 502"));
    task.await.unwrap();
    assert_eq!(waits.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn with_few_connections_open_none_is_parked() {
    let (mut client, waits, _task) = served_above(1).await;
    let mut pending = Vec::new();
    for _ in 0..3 {
        client.write_all(REQUEST).await.unwrap();
        let head = response(&mut client, &mut pending).await;
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(waits.load(Ordering::Relaxed), 0);
}

/// Every idle connection costs what this future holds while parked, so hyper's connection must
/// not be part of it (it is boxed while hyper serves): the whole future is smaller than hyper's
/// connection alone. With hyper's connection inline, as it was, it was 2.6 times as large.
#[tokio::test]
async fn the_parked_future_does_not_hold_hyper_s_connection() {
    let yaml = "upstreams:\n  a: { url: \"http://127.0.0.1:1\" }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: a, tenant: t }\n";
    let config = from_yaml(yaml, "test.yaml", &Overrides::default()).unwrap();
    let app = App::new(config, AppOptions { access_log: false }).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, remote) = listener.accept().await.unwrap();
    let (_stop_tx, stop) = watch::channel(false);
    let (activity, close) = (AtomicU64::new(0), Notify::new());
    let crowd = Crowd::new(Arc::new(tokio::sync::Semaphore::new(0)), 1, 0);
    let (parking, h1) = (Parking::new(), http1::Builder::new());
    let service = DataService::new(
        app,
        Arc::new(ConnInfo::new(remote, false, None)),
        LIMITS.body,
        Arc::new(AtomicU64::new(0)),
        Some(parking.clone()),
    );
    let cx = Serving {
        h1: &h1,
        stop,
        limits: &LIMITS,
        activity: &activity,
        close: &close,
        crowd: &crowd,
    };
    let io = Watched::new(server, parking.clone());
    let future = serve(Bytes::new(), io, service, parking, cx);
    let hyper = std::mem::size_of::<http1::Connection<Io<TcpStream>, DataService>>();
    let held = std::mem::size_of_val(&future);
    assert!(
        held < hyper,
        "the parked future is {held} bytes, hyper's connection {hyper}"
    );
}
