//! Replays every committed fuzz input, the seed corpus (`fuzz/corpus/<target>/`) and the crashes
//! found and fixed (`fuzz/regressions/<target>/`), through the same bodies `cargo fuzz` runs, so
//! that plain `cargo test` on stable keeps them fixed. README, "Fuzzing".

use std::path::{Path, PathBuf};

#[path = "../fuzz/harness/mod.rs"]
mod harness;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, body: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        for file in inputs(&root.join(kind).join(target)) {
            let data = std::fs::read(&file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            // A failing input is named before its panic, to be found again.
            eprintln!("{target}: {}", file.display());
            body(&data);
            n += 1;
        }
    }
    n
}

/// Every directory under fuzz/corpus and fuzz/regressions is a target's, so that an input
/// filed under a misspelt name is not silently skipped.
#[test]
fn every_input_directory_belongs_to_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                harness::TARGETS.iter().any(|(t, _)| *t == name),
                "fuzz/{kind}/{name} is no target's (targets: {:?})",
                harness::TARGETS.iter().map(|(t, _)| t).collect::<Vec<_>>()
            );
        }
    }
}

macro_rules! replays {
    ($($test:ident: $target:literal => $body:path;)*) => {$(
        #[test]
        fn $test() {
            let n = replay($target, $body);
            assert!(n > 0, "no inputs for fuzz target {}: fuzz/corpus/{} is empty", $target, $target);
        }
    )*};
}

replays! {
    path_inputs: "path" => harness::path::run;
    config_inputs: "config" => harness::config::run;
    tenant_inputs: "tenant" => harness::tenant::run;
    basic_auth_inputs: "basic_auth" => harness::auth::run;
    read_frames_inputs: "read_frames" => harness::read::run;
    remote_write_inputs: "remote_write" => harness::write::run;
}
