#![no_main]
//! `cargo fuzz run read_frames`: the body is fuzz/harness/read.rs, shared with tests/fuzz_corpus.rs.

#[path = "../harness/mod.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::read::run(data));
