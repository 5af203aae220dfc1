//! Replays the fuzz corpus on stable: every file of `fuzz/corpus/<target>/` and of
//! `fuzz/regressions/<target>/` (inputs that once broke a property, kept after the fix) goes
//! through the same per-input check as the cargo-fuzz target (`deepflow_tempo::fuzzing`).

use deepflow_tempo::fuzzing::TARGETS;
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    v.sort();
    v
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind);
    let mut total = 0;
    for (name, check) in TARGETS {
        for file in files(&root.join(name)) {
            let data = std::fs::read(&file).expect("read corpus file");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(
                outcome.is_ok(),
                "{name}: {} ({:?}) breaks a property",
                file.display(),
                String::from_utf8_lossy(&data)
            );
            total += 1;
        }
    }
    total
}

#[test]
fn every_corpus_file_passes_its_target() {
    for (name, _) in TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(name);
        assert!(
            !files(&dir).is_empty(),
            "no corpus for target {name} in {}",
            dir.display()
        );
    }
    assert!(replay("corpus") > 0);
}

#[test]
fn every_kept_regression_passes_its_target() {
    replay("regressions");
}
