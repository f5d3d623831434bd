//! Every file under `config/` is checked by its kind, and a file of a kind nobody checks
//! fails the test, so nothing users copy from there goes unchecked:
//!
//! - pullgate configurations (`*.toml`): `pullgate check-config` must accept them, and so
//!   must the `pullgate.toml` inside each Kubernetes ConfigMap (`config/kubernetes/` and the
//!   replicas on one bucket of `config/kubernetes/ha/`);
//! - Kubernetes manifests, containerd `hosts.toml`, `registries.conf`, docker's
//!   `daemon.json`: `tests/k8s_check.py`, run with the Python that has kubernetes-validate
//!   (schemas, the kustomization, every configured path against the Deployment's mounts,
//!   probes, and each client file against pullgate's routing and mirror host names);
//! - JSON (`*.json`, `*.dockerconfigjson`): parsed, dockerconfigjson entries complete, the
//!   Grafana dashboard well formed and querying exactly the metrics a running pullgate
//!   exports (which `docs/operations.md` must also describe);
//! - `config/README.md`: names every file.
//!
//! The checker is shown to fail on broken copies of the files, so a green run means
//! something.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::http::metrics_text;
use crate::support::pullgate::{Options, Pullgate};
use crate::support::require;

const BIN: &str = env!("CARGO_BIN_EXE_pullgate");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file below `dir`, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// How each file under a `config/` directory is checked.
#[derive(Default)]
struct Plan {
    /// `pullgate check-config`.
    pullgate: Vec<PathBuf>,
    /// tests/k8s_check.py, relative to the directory holding `config/`.
    python: Vec<PathBuf>,
    json: Vec<PathBuf>,
    dockerconfig: Vec<PathBuf>,
    dashboards: Vec<PathBuf>,
    readme: Option<PathBuf>,
    /// Files of a kind nothing checks.
    unknown: Vec<PathBuf>,
}

fn plan(base: &Path) -> Plan {
    let mut p = Plan::default();
    for f in files_under(&base.join("config")) {
        let rel = f.strip_prefix(base).unwrap().to_owned();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let ext = f
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        match (name.as_str(), ext.as_str()) {
            ("README.md", _) if rel == Path::new("config/README.md") => p.readme = Some(f),
            ("hosts.toml", _) | (_, "conf" | "yaml" | "yml") => p.python.push(rel),
            (_, "toml") => p.pullgate.push(f),
            ("daemon.json", _) => {
                p.json.push(f);
                p.python.push(rel);
            }
            (_, "json") if rel.starts_with("config/grafana") => {
                p.json.push(f.clone());
                p.dashboards.push(f);
            }
            (_, "json") => p.json.push(f),
            (_, "dockerconfigjson") => p.dockerconfig.push(f),
            _ => p.unknown.push(rel),
        }
    }
    p
}

/// The Python that has kubernetes-validate: the interpreter its script runs with (the venv
/// tests/run-all.sh makes). Missing kubernetes-validate fails the test.
fn python() -> PathBuf {
    let script = require("kubernetes-validate");
    let text = std::fs::read_to_string(&script).unwrap_or_default();
    let mut lines = text.lines();
    let shebang = lines.next().unwrap_or_default();
    if let Some(interp) = shebang.strip_prefix("#!") {
        let interp = interp.trim();
        if interp.contains("python") && !interp.contains(' ') && Path::new(interp).is_file() {
            return PathBuf::from(interp);
        }
        // pip writes `#!/bin/sh` and `'''exec' /long/path/python "$0" "$@"` for long paths.
        if let Some(path) = lines
            .next()
            .and_then(|l| l.strip_prefix("'''exec' "))
            .and_then(|l| l.split_whitespace().next())
        {
            if Path::new(path).is_file() {
                return PathBuf::from(path);
            }
        }
    }
    let beside = script.with_file_name("python3");
    if beside.is_file() {
        return beside;
    }
    require("python3")
}

fn check_with_python(python: &Path, base: &Path, files: &[PathBuf], extra: &[&Path]) -> Output {
    Command::new(python)
        .arg(repo().join("tests/k8s_check.py"))
        .args(extra)
        .args(files)
        .current_dir(base)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()))
}

fn text(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `pullgate check-config --config FILE` must accept it; returns the effective settings.
fn check_config(file: &Path) -> String {
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pullgate check-config --config {}:\n{}",
        file.display(),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn parse_json(file: &Path) -> Value {
    let bytes = std::fs::read(file).unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// A dockerconfigjson: `auths`, each entry with `auth` or a username and password.
fn check_dockerconfig(file: &Path) {
    let v = parse_json(file);
    let auths = v["auths"]
        .as_object()
        .unwrap_or_else(|| panic!("{}: no auths object", file.display()));
    assert!(!auths.is_empty(), "{}: no entries", file.display());
    for (key, entry) in auths {
        let basic = entry["auth"].as_str().is_some_and(|a| !a.is_empty());
        let pair = entry["username"].as_str().is_some() && entry["password"].as_str().is_some();
        assert!(
            basic || pair,
            "{}: entry {key} has neither auth nor username and password",
            file.display()
        );
    }
}

/// Parentheses, brackets and braces balance outside quoted strings.
fn balanced(expr: &str) -> bool {
    let mut stack = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in expr.chars() {
        if quoted {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => escaped = false,
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty() && !quoted
}

/// Checks the dashboard's structure; returns the PromQL of its panels and variables.
fn check_dashboard(file: &Path) -> Vec<String> {
    let d = parse_json(file);
    let at = file.display();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{at}: schemaVersion"
    );
    assert!(
        d["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "{at}: uid"
    );
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "{at}: needs a Prometheus data source variable named datasource"
    );
    let mut exprs: Vec<String> = vars
        .iter()
        .filter_map(|v| v["definition"].as_str().map(str::to_owned))
        .collect();
    let mut ids = BTreeSet::new();
    let panels = d["panels"].as_array().expect("panels");
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{at}: duplicate id in {title}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && g["h"].as_u64().is_some(),
            "{at}: gridPos of {title}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(
            !p["description"].as_str().unwrap_or_default().is_empty(),
            "{at}: {title} has no description"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{at}: {title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{at}: {title} queries nothing");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().unwrap().to_owned()),
                "{at}: {title}"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{at}: {title}");
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                expr.contains("pullgate_") && balanced(expr),
                "{at}: {title}: {expr}"
            );
            exprs.push(expr.to_owned());
        }
    }
    assert!(ids.len() >= 10, "{at}: only {} panels", ids.len());
    exprs
}

/// Metric names in PromQL: identifiers starting with `pullgate_`, outside quotes.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("pullgate_") {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

#[test]
fn every_file_under_config_is_checked_by_its_kind() {
    let python = python();
    let base = repo();
    let p = plan(&base);
    assert!(
        p.unknown.is_empty(),
        "no check for {:?}: give their kind one in tests/e2e/config_files.rs",
        p.unknown
    );

    for f in &p.pullgate {
        check_config(f);
        println!("ok  {}: pullgate check-config", f.display());
    }
    for f in &p.json {
        parse_json(f);
        println!("ok  {}: JSON", f.display());
    }
    for f in &p.dockerconfig {
        check_dockerconfig(f);
        println!("ok  {}: dockerconfigjson", f.display());
    }
    for f in &p.dashboards {
        check_dashboard(f);
        println!("ok  {}: Grafana dashboard", f.display());
    }

    let readme = p.readme.as_ref().expect("config/README.md");
    let index = std::fs::read_to_string(readme).unwrap();
    for f in files_under(&base.join("config")) {
        let rel = f.strip_prefix(base.join("config")).unwrap();
        if f != *readme {
            assert!(
                index.contains(&format!("`{}`", rel.display())),
                "config/README.md does not list {}",
                rel.display()
            );
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let in_cluster = dir.path().join("pullgate.toml");
    let replicas = dir.path().join("pullgate-ha.toml");
    let out = check_with_python(
        &python,
        &base,
        &p.python,
        &[
            Path::new("--configmap-toml"),
            &in_cluster,
            Path::new("--ha-configmap-toml"),
            &replicas,
        ],
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "tests/k8s_check.py:\n{}", text(&out));
    // The ConfigMap's pullgate.toml is a configuration pullgate accepts, with TLS on.
    let settings = check_config(&in_cluster);
    assert!(settings.contains("[server.tls]"), "{settings}");
    println!("ok  config/kubernetes/configmap.yaml pullgate.toml: pullgate check-config");
    // And the replicas' one: blobs in a bucket, TLS on, no bound on a cache directory.
    let settings = check_config(&replicas);
    for want in [
        "[server.tls]",
        "[storage]\nbackend = \"s3\"",
        "[storage.s3]",
    ] {
        assert!(settings.contains(want), "{want:?} in:\n{settings}");
    }
    assert!(!settings.contains("max_size = \""), "{settings}");
    println!("ok  config/kubernetes/ha/configmap.yaml pullgate.toml: pullgate check-config");
    // The guide's lifecycle rule aborts unfinished uploads under that ConfigMap's prefix.
    let prefix = toml::from_str::<toml::Value>(&settings).unwrap()["storage"]["s3"]["prefix"]
        .as_str()
        .unwrap()
        .to_owned();
    let guide = std::fs::read_to_string(base.join("docs/operations.md")).unwrap();
    let section = guide
        .split("### Replicas on one bucket")
        .nth(1)
        .expect("docs/operations.md: Replicas on one bucket");
    let block = |lang: &str| {
        section
            .split(&format!("```{lang}\n"))
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap_or_else(|| panic!("no {lang} lifecycle rule"))
            .to_owned()
    };
    let rule: Value = serde_json::from_str(&block("json")).unwrap();
    let rule = &rule["Rules"][0];
    assert_eq!(rule["Status"], "Enabled");
    assert_eq!(rule["Filter"]["Prefix"], format!("{prefix}blobs/"));
    assert_eq!(
        rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"],
        1
    );
    let xml = block("xml");
    for want in [
        format!("<Prefix>{prefix}blobs/</Prefix>"),
        "<DaysAfterInitiation>1</DaysAfterInitiation>".to_owned(),
        "<Status>Enabled</Status>".to_owned(),
    ] {
        assert!(xml.contains(&want), "{want} in:\n{xml}");
    }
    println!("ok  docs/operations.md: the lifecycle rule covers {prefix}blobs/");

    // Nothing here checks nothing.
    let kinds = |suffix: &str| {
        p.python
            .iter()
            .filter(|f| f.to_string_lossy().ends_with(suffix))
            .count()
    };
    assert!(p.pullgate.len() >= 2, "{:?}", p.pullgate);
    assert!(p.dockerconfig.len() >= 2 && p.dashboards.len() == 1);
    assert!(
        kinds(".yaml") >= 16
            && kinds("hosts.toml") >= 1
            && kinds(".conf") >= 1
            && kinds("daemon.json") == 1
    );
}

/// The checker catches what it is there to catch: each broken copy of the files fails it,
/// naming the problem.
#[test]
fn the_config_checker_fails_on_broken_files() {
    let python = python();
    let base = tempfile::tempdir().unwrap();
    for f in files_under(&repo().join("config")) {
        let to = base.path().join(f.strip_prefix(repo()).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&f, &to).unwrap();
    }
    let files = plan(base.path()).python;
    let ok = check_with_python(&python, base.path(), &files, &[]);
    assert!(ok.status.success(), "the unbroken copy:\n{}", text(&ok));

    let deployment = "config/kubernetes/deployment.yaml";
    let configmap = "config/kubernetes/configmap.yaml";
    let ha_deployment = "config/kubernetes/ha/deployment.yaml";
    let breakages: &[(&str, &str, &str, &str)] = &[
        // (file, text, replacement, expected in the failure)
        (
            deployment,
            "mountPath: /var/lib/pullgate\n",
            "mountPath: /var/lib/cache\n",
            "cache.dir",
        ),
        (
            configmap,
            "dir = \"/var/lib/pullgate\"",
            "dir = \"/var/cache/pullgate\"",
            "cache.dir",
        ),
        (
            deployment,
            "claimName: pullgate-cache",
            "claimName: pullgate-data",
            "pullgate-data",
        ),
        (
            deployment,
            "secretName: pullgate-tls",
            "secretName: pullgate-upstream",
            "server.tls.cert",
        ),
        (
            deployment,
            "secretName: pullgate-clients",
            "secretName: pullgate-token-key",
            "auth.client_secrets",
        ),
        (
            configmap,
            "signing_key = \"/var/run/secrets/pullgate/token-key/key\"",
            "signing_key = \"/var/run/secrets/pullgate/token-key/signing.key\"",
            "auth.signing_key",
        ),
        (
            deployment,
            "mountPath: /var/run/secrets/pullgate/upstream\n",
            "mountPath: /var/run/secrets/pullgate/upstream-creds\n",
            "upstream docker.io credentials",
        ),
        (
            deployment,
            "- /etc/pullgate/pullgate.toml",
            "- /etc/pullgate.toml",
            "--config",
        ),
        (
            deployment,
            "path: /readyz",
            "path: /healthz",
            "readinessProbe",
        ),
        (
            deployment,
            "scheme: HTTPS\n            periodSeconds: 10",
            "scheme: HTTP\n            periodSeconds: 10",
            "livenessProbe",
        ),
        (
            deployment,
            "terminationGracePeriodSeconds: 45",
            "terminationGracePeriodSeconds: 30",
            "drain_timeout",
        ),
        (
            deployment,
            "type: Recreate",
            "type: RollingUpdate",
            "Recreate",
        ),
        (
            deployment,
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: \"yes\"",
            "schema",
        ),
        (
            deployment,
            "              protocol: TCP\n",
            "              protocol: TCP\n              hostPorts: 1\n",
            "schema",
        ),
        (
            "config/kubernetes/kustomization.yaml",
            "  - pdb.yaml\n",
            "",
            "resources",
        ),
        (
            "config/kubernetes/secrets.yaml",
            "\"ghcr.io/team-a\":",
            "\"quay.io/team-a\":",
            "grants nothing",
        ),
        // Replicas on one bucket.
        (
            "config/kubernetes/ha/configmap.yaml",
            "backend = \"s3\"",
            "backend = \"filesystem\"",
            "lost with the pod",
        ),
        (
            ha_deployment,
            "secretName: pullgate-s3",
            "secretName: pullgate-token-key",
            "access_key_id",
        ),
        (
            ha_deployment,
            "mountPath: /var/run/secrets/pullgate/s3\n",
            "mountPath: /var/run/secrets/pullgate/s3-creds\n",
            "storage.s3.credentials",
        ),
        (
            ha_deployment,
            "topologyKey: kubernetes.io/hostname",
            "topologyKey: kubernetes.io/os",
            "kubernetes.io/hostname",
        ),
        (
            ha_deployment,
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
            "securityContext differs",
        ),
        (
            "config/kubernetes/ha/pdb.yaml",
            "maxUnavailable: 1",
            "maxUnavailable: 3",
            "PodDisruptionBudget",
        ),
        (
            "config/kubernetes/ha/service-peers.yaml",
            "  clusterIP: None\n",
            "",
            "headless",
        ),
        (
            "config/kubernetes/ha/secrets.yaml",
            "\"ghcr.io/team-a\":",
            "\"ghcr.io/team-b\":",
            "differs from the one in config/kubernetes",
        ),
        (
            "config/podman/registries.conf",
            "location = \"mirror.example.com:5000/ghcr.io\"",
            "location = \"mirror.example.com:5000/ghcr\"",
            "reaches upstream 'docker.io'",
        ),
        (
            "config/docker/daemon.json",
            "mirror.example.com:5000",
            "mirror.example.com",
            "mirror_hosts",
        ),
        (
            "config/containerd/certs.d/ghcr.io/hosts.toml",
            "capabilities = [\"pull\", \"resolve\"]",
            "capabilities = [\"pull\", \"resolve\", \"push\"]",
            "never push",
        ),
    ];
    for (file, from, to, expected) in breakages {
        let path = base.path().join(file);
        let original = std::fs::read_to_string(&path).unwrap();
        assert!(
            original.contains(from),
            "{file} no longer contains {from:?}: update this test"
        );
        std::fs::write(&path, original.replacen(from, to, 1)).unwrap();
        let out = check_with_python(&python, base.path(), &files, &[]);
        std::fs::write(&path, &original).unwrap();
        assert!(
            !out.status.success(),
            "{file} with {from:?} -> {to:?} passed:\n{}",
            text(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected),
            "{file} with {from:?} -> {to:?}: failure does not mention {expected:?}:\n{stderr}"
        );
        println!("ok  caught: {file}: {from:?} -> {to:?}");
    }

    // A file of a kind nothing checks fails the walk.
    std::fs::write(base.path().join("config/kubernetes/notes.txt"), "hi").unwrap();
    assert_eq!(
        plan(base.path()).unknown,
        vec![PathBuf::from("config/kubernetes/notes.txt")]
    );
}

/// The dashboard and the operations guide cover exactly the metric families a running
/// pullgate exports: none missing, none made up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_guide_cover_every_exported_metric() {
    // No request goes upstream: the families are declared before anything is counted.
    let pullgate = Pullgate::start(Options::new("http://127.0.0.1:9"));
    let exposition = metrics_text(&pullgate.url()).await;
    let families: BTreeMap<String, String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect();
    assert!(families.len() >= 15, "{exposition}");

    let dashboard = repo().join("config/grafana/pullgate-dashboard.json");
    let mut used = BTreeSet::new();
    for expr in check_dashboard(&dashboard) {
        for name in metric_names(&expr) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|base| families.get(*base).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(&name)
                .to_owned();
            assert!(
                families.contains_key(&family),
                "the dashboard queries {name}, which pullgate does not export:\n{exposition}"
            );
            if families[&family] == "histogram" {
                assert_ne!(
                    family, name,
                    "{name} is a histogram: query its _bucket/_sum/_count"
                );
            }
            used.insert(family);
        }
    }
    let unused: Vec<_> = families.keys().filter(|f| !used.contains(*f)).collect();
    assert!(unused.is_empty(), "no dashboard panel shows {unused:?}");

    let guide = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let undocumented: Vec<_> = families
        .keys()
        .filter(|f| !guide.contains(&format!("`{f}")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/operations.md does not describe {undocumented:?}"
    );
    println!(
        "ok  {} metric families: on the dashboard and in the guide",
        families.len()
    );
}
