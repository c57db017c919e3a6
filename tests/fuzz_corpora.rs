//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/*`) and every crash
//! reproducer (`fuzz/regressions/<target>/*`) through the same entry points the fuzz targets
//! call (`fuzz/src/harness.rs`, included here), so CI keeps the corpora honest without running a
//! fuzzer: a decoder change that panics on an input the fuzzer once found fails this test.
//!
//! The corpora are minimized (`cargo fuzz cmin`), a few hundred files per target; the whole
//! replay takes seconds.

#[path = "../fuzz/src/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::path::Path;

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

#[test]
fn every_corpus_file_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut total = 0;
    for (name, run) in harness::TARGETS {
        let corpus = files(&root.join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name} is empty: every target keeps its minimized corpus"
        );
        for f in corpus
            .iter()
            .chain(&files(&root.join("regressions").join(name)))
        {
            let data = std::fs::read(f).unwrap();
            let r = std::panic::catch_unwind(|| run(&data));
            assert!(r.is_ok(), "{name}: {} panics", f.display());
            total += 1;
        }
    }
    eprintln!("replayed {total} corpus files");
}
