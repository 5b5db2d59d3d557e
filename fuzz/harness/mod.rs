//! The fuzz target bodies, shared by the `cargo fuzz` targets (`fuzz/fuzz_targets/*.rs`) and by
//! `tests/fuzz_corpus.rs`, which replays every corpus and regression input on stable `cargo test`.
//! Both include this directory with `#[path]`, so there is one copy of each body.
//!
//! A body takes arbitrary bytes, drives one parser or decoder through tenantgate's public API,
//! and panics (an `assert!`) when a property fails; an `Err` from the code under test is an
//! answer, never a failure. Only tenantgate and crates it already depends on are used.

pub mod auth;
pub mod config;
pub mod path;
pub mod read;
pub mod tenant;
pub mod write;

/// A target's body: bytes in, a panic when a property fails.
pub type Body = fn(&[u8]);

/// Every target: its name (the `fuzz/fuzz_targets/<name>.rs` file and the `fuzz/corpus/<name>/`
/// directory) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("path", path::run),
    ("config", config::run),
    ("tenant", tenant::run),
    ("basic_auth", auth::run),
    ("read_frames", read::run),
    ("remote_write", write::run),
];

/// Polls a future once: the code paths fuzzed here never wait (no bcrypt, no I/O), so one poll
/// finishes them; `None` if one did wait.
pub fn poll_once<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
