#![no_main]
//! `cargo fuzz run basic_auth`: the body is fuzz/harness/auth.rs, shared with tests/fuzz_corpus.rs.

#[path = "../harness/mod.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::auth::run(data));
