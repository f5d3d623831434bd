//! The cargo-fuzz project under `fuzz/` stays out of the workspace (it needs nightly and
//! libFuzzer, and CI builds neither), covers every parser that reads client or upstream
//! input, and `docs/fuzzing.md` documents each of its targets. Stable, and builds nothing.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The parsers issue 5 asked to fuzz; a target may be added, none dropped.
const REQUIRED: &[&str] = &[
    "route",
    "name",
    "digest",
    "reference",
    "www_authenticate",
    "dockerconfigjson",
    "manifest",
    "range",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifest(path: &Path) -> toml::Table {
    toml::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// `[[bin]]` targets of the fuzz project: name and source path.
fn targets() -> Vec<(String, PathBuf)> {
    let fuzz = manifest(&repo().join("fuzz/Cargo.toml"));
    fuzz["bin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|bin| {
            let name = bin["name"].as_str().unwrap().to_owned();
            let path = repo().join("fuzz").join(bin["path"].as_str().unwrap());
            (name, path)
        })
        .collect()
}

fn names_in(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn fuzz_project_is_outside_the_workspace() {
    let root = manifest(&repo().join("Cargo.toml"));
    let exclude = root["workspace"]["exclude"].as_array().unwrap();
    assert!(exclude.iter().any(|e| e.as_str() == Some("fuzz")));
    let members = root["workspace"]["members"].as_array().unwrap();
    assert!(members
        .iter()
        .all(|m| !m.as_str().unwrap().starts_with("fuzz")));
    // Its own (empty) workspace table, or cargo would look for it in ours.
    let fuzz = manifest(&repo().join("fuzz/Cargo.toml"));
    assert!(fuzz.contains_key("workspace"));
    assert!(repo().join("fuzz/Cargo.lock").is_file());
}

#[test]
fn every_target_is_built_required_and_documented() {
    let targets = targets();
    let built: BTreeSet<PathBuf> = targets.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(built, names_in(&repo().join("fuzz/fuzz_targets")));
    for required in REQUIRED {
        assert!(
            targets.iter().any(|(name, _)| name == required),
            "no fuzz target {required}"
        );
    }
    let doc = fs::read_to_string(repo().join("docs/fuzzing.md")).unwrap();
    for (name, _) in &targets {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "docs/fuzzing.md has no row for the fuzz target {name}"
        );
    }
    for seeds in names_in(&repo().join("fuzz/seeds")) {
        let name = seeds.file_name().unwrap().to_str().unwrap();
        assert!(
            targets.iter().any(|(t, _)| t == name),
            "fuzz/seeds/{name} is for no target"
        );
    }
}
