#![no_main]
//! `cargo fuzz run remote_write`: the body is fuzz/harness/write.rs, shared with tests/fuzz_corpus.rs.

#[path = "../harness/mod.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::write::run(data));
