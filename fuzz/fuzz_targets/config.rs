#![no_main]
//! `cargo fuzz run config`: the body is fuzz/harness/config.rs, shared with tests/fuzz_corpus.rs.

#[path = "../harness/mod.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::config::run(data));
