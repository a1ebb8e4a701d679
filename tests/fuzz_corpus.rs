//! Replays the fuzz targets' kept inputs (`fuzz/corpus/<target>/` seeds and `fuzz/regressions/<target>/`
//! crash reproducers) through the same checks the fuzzers run, so they hold in every `cargo test`
//! without libFuzzer or a nightly toolchain.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Every file kept for `target`, in a stable order.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in [root.join("corpus").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("readable directory entry").path();
            if path.is_file() && path.file_name().is_some_and(|name| !name.to_string_lossy().starts_with('.')) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs every input, then names all that failed (not just the first).
fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no kept inputs for fuzz target {target}");
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).expect("readable input");
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{} of {} {target} inputs failed:\n{}", failed.len(), files.len(), failed.join("\n"));
}

#[test]
fn token() {
    replay("token", checks::token);
}

#[test]
fn path() {
    replay("path", checks::path);
}

#[test]
fn classify() {
    replay("classify", checks::classify);
}

#[test]
fn config() {
    replay("config", checks::config);
}

#[test]
fn shorthand() {
    replay("shorthand", checks::shorthand);
}

#[test]
fn cookie() {
    replay("cookie", checks::cookie);
}
