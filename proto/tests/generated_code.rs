//! The checked-in prost code in `src/gen/` must be exactly what the `.proto` files generate.
//!
//! Run with `DAEMONEYE_BLESS=1` to rewrite `src/gen/` after editing a `.proto` file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PROTO_FILES: &[&str] = &[
    "daemoneye/bus.proto",
    "daemoneye/events.proto",
    "daemoneye/control.proto",
    "daemoneye/stats.proto",
    "daemoneye/wal.proto",
    "daemoneye/store.proto",
];

fn read_dir_rs(dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read generated dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            files.insert(
                name,
                std::fs::read_to_string(&path).expect("read generated file"),
            );
        }
    }
    files
}

#[test]
fn generated_code_matches_proto_files() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let proto_dir = crate_dir.join("proto");
    let gen_dir = crate_dir.join("src").join("gen");
    let fds = protox::compile(PROTO_FILES, [&proto_dir]).expect("protox compiles the .proto files");

    let out = tempfile::tempdir().expect("tempdir");
    let mut config = prost_build::Config::new();
    config
        .bytes(["."])
        .btree_map(["."])
        // Correlation is rare and large: boxed, a Publish or Deliver moves far fewer bytes.
        .boxed(".daemoneye.bus.v1.Publish.correlation")
        .boxed(".daemoneye.bus.v1.Deliver.correlation")
        .out_dir(out.path());
    config.compile_fds(fds).expect("prost-build generates code");

    let fresh = read_dir_rs(out.path());
    assert!(!fresh.is_empty(), "prost-build produced no files");
    if std::env::var_os("DAEMONEYE_BLESS").is_some() {
        for (name, text) in &fresh {
            std::fs::write(gen_dir.join(name), text).expect("write generated file");
        }
        return;
    }
    let committed = read_dir_rs(&gen_dir);
    let fresh_names: Vec<_> = fresh.keys().collect();
    let committed_names: Vec<_> = committed.keys().collect();
    assert_eq!(
        fresh_names, committed_names,
        "generated file set differs; rerun with DAEMONEYE_BLESS=1"
    );
    for (name, text) in &fresh {
        assert!(
            committed[name] == *text,
            "src/gen/{name} is stale; rerun `DAEMONEYE_BLESS=1 cargo test -p daemoneye-proto --test generated_code`"
        );
    }
}
