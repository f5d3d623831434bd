//! Pre-warming: `pullgate warm` against a running pullgate in front of a real Distribution
//! (plain output in a pipe, progress bars under a pseudo-terminal, credentials from a
//! docker config with the Basic and the token scheme), and `[[prefetch]]` in the config.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::distribution::{Auth, Distribution};
use crate::support::http::fills_settled;
use crate::support::images::{self, Flavor, Index, Pusher};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::secret::{dockerconfigjson, SecretVolume};
use crate::support::{eventually, require, skopeo};

const BIN: &str = env!("CARGO_BIN_EXE_pullgate");

fn warm(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("warm")
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running pullgate warm")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn warm_help_names_its_flags() {
    let out = Command::new(BIN).args(["warm", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--mirror",
        "--docker-config",
        "--user",
        "--platform",
        "--file",
        "--concurrency",
        "linux/amd64",
    ] {
        assert!(help.contains(flag), "warm --help lacks {flag}:\n{help}");
    }
    // --docker-config and --user are one or the other; no image is an error.
    let out = warm(&[
        "--mirror",
        "http://127.0.0.1:9",
        "--user",
        "a:b",
        "--docker-config",
        "/x",
        "a:1",
    ]);
    assert!(!out.status.success());
    let out = warm(&["--mirror", "http://127.0.0.1:9"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image to warm"));
}

async fn upstream_with_index(repo: &str, seed: &str, sizes: &[usize]) -> (Distribution, Index) {
    let upstream = Distribution::start(Auth::Anonymous);
    let idx = images::index(seed, sizes, Flavor::Oci);
    Pusher::new(&upstream.url(), None)
        .index(repo, "v1", &idx)
        .await;
    (upstream, idx)
}

/// Blob GETs pullgate sent the upstream for these digests, in all.
fn upstream_blob_gets(upstream: &Distribution, repo: &str, digests: &[&str]) -> usize {
    digests
        .iter()
        .map(|d| upstream.count("GET", &format!("/v2/{repo}/blobs/{d}")))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warms_one_platform_then_all_and_a_client_pull_afterwards_is_all_hits() {
    let (upstream, idx) = upstream_with_index("e2e/warm", "warm", &[300_000, 4096]).await;
    let pullgate = Pullgate::start(Options::new(&upstream.url()));
    let (amd64, arm64) = (&idx.images[0], &idx.images[1]);
    let blobs = |img: &images::Image| -> Vec<String> {
        img.blobs().map(|b| b.digest.clone()).collect::<Vec<_>>()
    };

    // One platform: only its config and layers are fetched.
    let out = warm(&[
        "--mirror",
        &pullgate.url(),
        "--platform",
        "linux/arm64",
        "e2e/warm:v1",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    fills_settled(&pullgate.url()).await;
    for d in blobs(arm64) {
        assert!(pullgate.blob_path(&d).is_file(), "{d} not cached");
    }
    for d in blobs(amd64) {
        assert!(
            !pullgate.blob_path(&d).exists(),
            "{d} cached, not asked for"
        );
    }
    // In a pipe: one plain line per step, no bars; then the summary table.
    assert!(
        stderr.contains("e2e/warm:v1: index, 1 of 2 platforms selected"),
        "{stderr}"
    );
    for d in blobs(arm64) {
        let short = &d[..7 + 12];
        assert!(
            stderr.contains(&format!("e2e/warm:v1: blob {short}")) && stderr.contains("fetched"),
            "{stderr}"
        );
    }
    assert!(!stderr.contains("ETA"), "bars in a pipe:\n{stderr}");
    assert!(
        stdout.starts_with("IMAGE") && stdout.contains("FETCHED"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("e2e/warm:v1"))
        .unwrap();
    assert!(row.contains("3 (0 cached)") && row.ends_with("ok"), "{row}");

    // Every platform: arm64's three blobs were cached, amd64's three are fetched now.
    let out = warm(&[
        "--mirror",
        &pullgate.url(),
        "--platform",
        "all",
        "e2e/warm:v1",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    fills_settled(&pullgate.url()).await;
    let row = stdout
        .lines()
        .find(|l| l.starts_with("e2e/warm:v1"))
        .unwrap();
    assert!(row.contains("6 (3 cached)"), "{stdout}");
    let all: Vec<String> = idx.images.iter().flat_map(blobs).collect();
    for d in &all {
        assert!(pullgate.blob_path(d).is_file(), "{d} not cached");
    }
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    assert_eq!(upstream_blob_gets(&upstream, "e2e/warm", &refs), 6);

    // A real client pulling every platform afterwards costs the upstream no blob.
    let dest = tempfile::tempdir().unwrap();
    skopeo::pull(
        format!("{}/e2e/warm:v1", pullgate.host()),
        dest.path().join("copy"),
        true,
    )
    .await
    .unwrap();
    assert_eq!(upstream_blob_gets(&upstream, "e2e/warm", &refs), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_fails_the_run_and_is_named_while_the_others_warm() {
    let (upstream, idx) = upstream_with_index("e2e/listed", "listed", &[2048]).await;
    let pullgate = Pullgate::start(Options::new(&upstream.url()));
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(
        &list,
        "# before the rollout\ne2e/listed:v1   # the app\n\ne2e/absent:v9\n",
    )
    .unwrap();
    let out = warm(&[
        "--mirror",
        &pullgate.url(),
        "--file",
        list.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("1 of 2 images failed: e2e/absent:v9")
            && stderr.contains("MANIFEST_UNKNOWN"),
        "{stderr}"
    );
    assert!(!stderr.contains("failed: e2e/listed"), "{stderr}");
    let ok = stdout.lines().find(|l| l.starts_with("e2e/listed:v1"));
    assert!(ok.is_some_and(|l| l.ends_with("ok")), "{stdout}");
    let failed = stdout.lines().find(|l| l.starts_with("e2e/absent:v9"));
    assert!(failed.is_some_and(|l| l.ends_with("FAILED")), "{stdout}");
    fills_settled(&pullgate.url()).await;
    // The default platform, linux/amd64.
    for b in idx.images[0].blobs() {
        assert!(pullgate.blob_path(&b.digest).is_file());
    }
    for b in idx.images[1].blobs() {
        assert!(!pullgate.blob_path(&b.digest).exists());
    }
}

/// A client secret keyed by the mirror's host, with the given `[auth]` extras.
fn authenticated(upstream: &Distribution, dir: &Path, extra: &str) -> Pullgate {
    let port = crate::support::free_port();
    let secret = SecretVolume::new(
        &dir.join(format!("clients-{port}")),
        dockerconfigjson(&[(&format!("127.0.0.1:{port}"), "warmer", "warm-secret-pw")]).as_bytes(),
    );
    let mut opts = Options::new(&upstream.url());
    opts.port = Some(port);
    opts.extra = format!(
        "[auth]\nclient_secrets = [\"{}\"]\n{extra}\n",
        secret.dir.display()
    );
    Pullgate::start(opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_a_docker_config_with_basic_and_with_tokens() {
    let (upstream, idx) = upstream_with_index("e2e/private", "private", &[4096]).await;
    let dir = tempfile::tempdir().unwrap();
    for (scheme, entry) in [("basic", "auth"), ("token", "username/password")] {
        let pullgate = authenticated(&upstream, dir.path(), &format!("scheme = \"{scheme}\""));
        // Without credentials: refused, and the run says what is missing.
        let out = warm(&["--mirror", &pullgate.url(), "e2e/private:v1"]);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{scheme}: {stdout}\n{stderr}");
        assert!(
            stderr.contains("e2e/private:v1")
                && (stderr.contains("--docker-config") || stderr.contains("401")),
            "{scheme}: {stderr}"
        );

        // A docker config.json as `docker login` writes it, or with username and password.
        let config = dir.path().join(format!("config-{scheme}.json"));
        let host = pullgate.host();
        let json = if entry == "auth" {
            dockerconfigjson(&[(&host, "warmer", "warm-secret-pw")])
        } else {
            serde_json::json!({"auths": {
                "other.example": {"username": "x", "password": "y"},
                host.clone(): {"username": "warmer", "password": "warm-secret-pw"},
            }})
            .to_string()
        };
        std::fs::write(&config, json).unwrap();
        let out = warm(&[
            "--mirror",
            &pullgate.url(),
            "--docker-config",
            config.to_str().unwrap(),
            "--platform",
            "all",
            "e2e/private:v1",
        ]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{scheme}: {stdout}\n{stderr}");
        fills_settled(&pullgate.url()).await;
        for b in idx.images.iter().flat_map(|i| i.blobs()) {
            assert!(pullgate.blob_path(&b.digest).is_file(), "{scheme}");
        }
        // A wrong password fails, naming the image; no password is ever printed.
        let out = warm(&[
            "--mirror",
            &pullgate.url(),
            "--user",
            "warmer:wrong-pw",
            "e2e/private:v1",
        ]);
        let (o2, e2) = text(&out);
        assert!(!out.status.success(), "{scheme}: {o2}\n{e2}");
        assert!(e2.contains("e2e/private:v1"), "{scheme}: {e2}");
        for t in [&stdout, &stderr, &o2, &e2] {
            assert!(
                !t.contains("warm-secret-pw") && !t.contains("wrong-pw"),
                "{t}"
            );
        }
        if scheme == "token" {
            assert!(
                pullgate.log().contains("/token"),
                "the token flow was not used"
            );
        }
    }
}

/// The bars, rendered: `script` gives the command a pseudo-terminal and records what it
/// drew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bars_on_a_terminal() {
    require("script");
    let (upstream, _idx) =
        upstream_with_index("e2e/bars", "bars", &[6 * 1024 * 1024, 3 * 1024 * 1024]).await;
    let pullgate = Pullgate::start(Options::new(&upstream.url()));
    let cmd = format!(
        "stty cols 120 rows 40; {BIN} warm --mirror {} --platform all e2e/bars:v1",
        pullgate.url()
    );
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running script");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{screen}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The image's bar: its name, the bar, bytes of the total, rate and ETA.
    let bars: Vec<&str> = screen
        .split(['\r', '\n'])
        .filter(|l| l.contains("e2e/bars:v1 [") && l.contains("ETA") && l.contains("/s"))
        .collect();
    assert!(
        bars.iter().any(|l| l.contains("/18.01 MiB")),
        "no image bar:\n{screen}"
    );
    assert!(
        bars.iter().any(|l| l.contains("done: 6 blobs, 0 cached")),
        "the image bar did not finish:\n{screen}"
    );
    // Blob bars while they were in flight, then the summary table.
    assert!(screen.contains("  sha256:"), "no blob bar:\n{screen}");
    assert!(
        screen.contains("IMAGE") && screen.contains("total: 1 images"),
        "{screen}"
    );
    // No plain step lines on a terminal.
    assert!(!screen.contains("e2e/bars:v1: blob"), "{screen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_keeps_matching_tags_warm_from_the_config() {
    let upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    let img = |tag: &str| images::image(&format!("pre-{tag}"), &[4096, 1024], Flavor::Oci, "amd64");
    let (i31, i32, i40, i33) = (img("3.1"), img("3.2"), img("4.0"), img("3.3"));
    push.image("e2e/pre", "3.1", &i31).await;
    push.image("e2e/pre", "3.2", &i32).await;
    push.image("e2e/pre", "4.0", &i40).await;
    let mut opts = Options::new(&upstream.url());
    opts.extra = format!(
        "[[prefetch]]\nimages = [\"{0}/e2e/pre:3.*\", \"{0}/e2e/pre:9.9\"]\nplatforms = [\"linux/amd64\"]\ninterval = \"2s\"\n",
        upstream.host()
    );
    let pullgate = Pullgate::start(opts);
    let cached = |i: &images::Image| i.blobs().all(|b| pullgate.blob_path(&b.digest).is_file());
    assert!(
        eventually(Duration::from_secs(20), || cached(&i31) && cached(&i32)),
        "3.x not prefetched:\n{}",
        pullgate.log()
    );
    assert!(!i40.blobs().any(|b| pullgate.blob_path(&b.digest).exists()));

    // A tag pushed later is picked up by the next round.
    push.image("e2e/pre", "3.3", &i33).await;
    assert!(
        eventually(Duration::from_secs(20), || cached(&i33)),
        "3.3 not prefetched:\n{}",
        pullgate.log()
    );
    assert!(!i40.blobs().any(|b| pullgate.blob_path(&b.digest).exists()));
    let text = crate::support::http::metrics_text(&pullgate.url()).await;
    let refreshed = crate::support::http::metric_value(&text, "pullgate_prefetch_refreshed_total");
    assert!(refreshed >= 3.0, "{text}");
    // The tag nobody pushed fails each round, counted and logged with its name.
    let failed = crate::support::http::metric_value(&text, "pullgate_prefetch_failed_total");
    assert!(failed >= 1.0, "{text}");
    assert!(
        pullgate
            .log()
            .lines()
            .any(|l| l.contains("prefetch failed") && l.contains("e2e/pre:9.9")),
        "{}",
        pullgate.log()
    );
    // The loop stops with the server.
    let mut pullgate = pullgate;
    let status = pullgate.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}\n{}", pullgate.log());
}
