//! The fuzz seed corpus kept in `rpc/fuzz/corpus/decode/` is exactly the frames
//! `rpc::fuzzing::seeds()` encodes today, so it stays valid as the wire changes.
//! After a wire change, rewrite it with:
//!
//! ```text
//! RPC_BLESS_CORPUS=1 cargo test -p rpc --test corpus
//! ```

use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode")
}

#[test]
fn seed_corpus_is_current() {
    let dir = corpus_dir();
    let seeds = rpc::fuzzing::seeds();
    if std::env::var_os("RPC_BLESS_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("seed-") {
                std::fs::remove_file(&path).unwrap();
            }
        }
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let hint = "run `RPC_BLESS_CORPUS=1 cargo test -p rpc --test corpus` to rewrite it";
    for (name, bytes) in &seeds {
        let path = dir.join(name);
        let on_disk =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; {hint}", path.display()));
        assert!(on_disk == *bytes, "{} is stale; {hint}", path.display());
    }
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name.starts_with("seed-") && !seeds.iter().any(|(n, _)| *n == name) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "seed files no longer generated: {stale:?}; {hint}"
    );
}
