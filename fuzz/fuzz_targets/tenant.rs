#![no_main]
//! `cargo fuzz run tenant`: the body is fuzz/harness/tenant.rs, shared with tests/fuzz_corpus.rs.

#[path = "../harness/mod.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::tenant::run(data));
