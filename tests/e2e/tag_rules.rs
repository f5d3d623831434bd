//! `[[cache.tag_rule]]` against a real Distribution: a pinned tag (`ttl = "never"`) is never
//! revalidated once cached, so it does not follow the upstream when the tag moves, while a
//! tag no rule matches follows it at the global `tag_ttl`; and `check-config --tag` names the
//! rule that decides each image.

use std::process::Command;

use crate::support::distribution::{Auth, Distribution};
use crate::support::http::request;
use crate::support::images::{self, Flavor, Pusher};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::sign::OCI_MANIFEST;

async fn digest_of(base: &str, repo: &str, tag: &str) -> String {
    let r = request(
        "GET",
        &format!("{base}/v2/{repo}/manifests/{tag}"),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(r.status, 200, "{repo}:{tag}");
    r.header("docker-content-digest")
        .expect("docker-content-digest")
        .to_owned()
}

fn pin_rule(host: &str) -> String {
    format!("[[cache.tag_rule]]\nimages = [\"{host}/team/*:v*\"]\nttl = \"never\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_tag_is_not_revalidated_and_an_unpinned_one_follows_the_upstream() {
    let upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    let one = images::image("pinned-one", &[1024], Flavor::Oci, "amd64");
    let two = images::image("pinned-two", &[1024], Flavor::Oci, "amd64");
    push.image("team/app", "v1.0.0", &one).await;
    push.image("team/app", "latest", &one).await;

    let mut opts = Options::new(&upstream.url());
    // Every unpinned tag is revalidated on every pull.
    opts.tag_ttl = "0s".into();
    opts.cache_extra = pin_rule(&upstream.host());
    let pullgate = Pullgate::start(opts);
    let base = pullgate.url();

    assert_eq!(
        digest_of(&base, "team/app", "v1.0.0").await,
        one.manifest.digest
    );
    assert_eq!(
        digest_of(&base, "team/app", "latest").await,
        one.manifest.digest
    );

    // Both tags move upstream.
    push.image("team/app", "v1.0.0", &two).await;
    push.image("team/app", "latest", &two).await;
    for _ in 0..3 {
        // Pinned: the cached digest, the upstream not asked.
        assert_eq!(
            digest_of(&base, "team/app", "v1.0.0").await,
            one.manifest.digest
        );
        // Not pinned: the new digest.
        assert_eq!(
            digest_of(&base, "team/app", "latest").await,
            two.manifest.digest
        );
    }
    assert_eq!(upstream.count("HEAD", "/v2/team/app/manifests/v1.0.0"), 1);
    assert_eq!(upstream.count("HEAD", "/v2/team/app/manifests/latest"), 4);
}

#[test]
fn check_config_names_the_rule_that_decides_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pullgate.toml");
    std::fs::write(
        &config,
        format!(
            "[cache]\ndir = \"{}\"\n{}\
             [[cache.tag_rule]]\nimages = [\"docker.io/**:latest\"]\nttl = \"10s\"\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n",
            dir.path().join("cache").display(),
            pin_rule("docker.io"),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pullgate"))
        .args(["check-config", "--config"])
        .arg(&config)
        .args([
            "--tag",
            "team/app:v2",
            "--tag",
            "alpine",
            "--tag",
            "alpine:3.20",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "[[cache.tag_rule]]\nimages = [\"docker.io/team/*:v*\"]\nttl = \"never\"",
        "# rule 1: never revalidated (pinned)",
        "#   docker.io/team/*:v*  (e.g. docker.io/team/x:vx)",
        "# --tag team/app:v2 is docker.io/team/app:v2: rule 1 (docker.io/team/*:v*), never revalidated (pinned)",
        "# --tag alpine is docker.io/library/alpine:latest: rule 2 (docker.io/**:latest), revalidated after 10s",
        "# --tag alpine:3.20 is docker.io/library/alpine:3.20: no rule matches: cache.tag_ttl, revalidated after 1m",
    ] {
        assert!(stdout.contains(want), "{want}\nnot in:\n{stdout}");
    }
    // An image no upstream serves is an error that names it.
    let out = Command::new(env!("CARGO_BIN_EXE_pullgate"))
        .args(["check-config", "--config"])
        .arg(&config)
        .args(["--tag", "quay.io/org/app:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no upstream is configured for quay.io"));
}
