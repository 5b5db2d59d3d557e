#![no_main]
//! `cargo fuzz run path`: the body is fuzz/harness/path.rs, shared with tests/fuzz_corpus.rs.

#[path = "../harness/mod.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::path::run(data));
