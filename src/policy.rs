//! `pullgate policy check IMAGE`: the trust policy's decision on one image, explained, with
//! an exit code CI can use: 0 served (allowed, or denied in `warn` mode), 1 denied, 2 no
//! decision (the image or its upstream could not be reached, a bad name, a bad config).
//!
//! It runs in-process with the configuration `serve` uses, not against a running mirror:
//! the same upstreams with the mirror's own credentials, the same keys and rules, the same
//! code path as a pull (`Mirror::manifest`), over a throw-away cache of its own, so it
//! never touches (or waits for the lock of) a running server's cache.

use anyhow::{bail, Context, Result};
use pullgate_mirror::{Mirror, MirrorConfig, MirrorError, PolicyDecision};
use pullgate_oci::{AcceptList, Reference, RepoName};
use pullgate_store::{Store, StoreOptions};
use pullgate_trust::KeySet;

use crate::config::Settings;

/// Exit codes.
pub const SERVED: i32 = 0;
pub const DENIED: i32 = 1;
pub const UNDECIDED: i32 = 2;

#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Judge IMAGE (`<upstream>/<repository>:<tag>` or `…@sha256:…`; without a configured
    /// upstream's name first, the default upstream) as a pull through the mirror would,
    /// and say why. Exit 0: served (allowed, or denied in warn mode); 1: denied; 2: no
    /// decision.
    Check {
        #[command(flatten)]
        config: crate::ConfigArgs,
        /// The image, e.g. docker.io/team/app:v1.
        image: String,
    },
}

/// `IMAGE` as (upstream name if it names one, repository, reference).
fn split_image<'a>(
    image: &'a str,
    upstreams: &[&str],
) -> Result<(Option<&'a str>, RepoName, Reference)> {
    let (name, reference) = match image.split_once('@') {
        Some((name, digest)) => (name, digest),
        None => {
            // A tag follows the last ':' after the last '/' (a host may carry a port).
            let slash = image.rfind('/').map_or(0, |i| i + 1);
            match image[slash..].rfind(':') {
                Some(i) => (&image[..slash + i], &image[slash + i + 1..]),
                None => (image, "latest"),
            }
        }
    };
    let reference =
        Reference::parse(reference).with_context(|| format!("{image}: bad reference"))?;
    let (upstream, repo) = match name.split_once('/') {
        Some((host, rest)) if upstreams.iter().any(|u| u.eq_ignore_ascii_case(host)) => {
            (Some(host), rest)
        }
        _ => (None, name),
    };
    let repo = RepoName::parse(repo).with_context(|| format!("{image}: bad repository name"))?;
    Ok((upstream, repo, reference))
}

pub fn run(settings: Settings, image: &str) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return UNDECIDED;
        }
    };
    let scratch =
        std::env::temp_dir().join(format!("pullgate-policy-check-{}", std::process::id()));
    let code = match runtime.block_on(check(&settings, image, &scratch)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            UNDECIDED
        }
    };
    let _ = std::fs::remove_dir_all(&scratch);
    code
}

async fn check(s: &Settings, image: &str, scratch: &std::path::Path) -> Result<i32> {
    let store = Store::open_with(
        scratch,
        StoreOptions {
            limits: None,
            inspect_only: false,
            bucket: None,
        },
    )
    .context("opening a scratch cache")?;
    let keys =
        KeySet::open(&s.trust.config.key, &s.trust.config.ca).context("[trust] keys and CAs")?;
    let mirror = Mirror::new(crate::upstreams(s)?, store, MirrorConfig::default())
        .with_trust(s.trust.policy.clone(), keys);
    let names: Vec<&str> = mirror.upstream_names().collect();
    let (upstream, repo, reference) = split_image(image, &names)?;
    let target = mirror
        .route(upstream, &repo)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let at = format!("{}/{}", target.upstream_name(), target.repo);
    match mirror
        .manifest(&target, &reference, &AcceptList::default())
        .await
    {
        Ok(m) => {
            println!("image     {at}@{}", m.digest);
            match &m.policy {
                Some(d) => explain(d),
                None => println!("decision  allowed: no [trust] policy"),
            }
            Ok(SERVED)
        }
        Err(MirrorError::PolicyDenied(d)) => {
            println!("image     {at}:{reference}");
            explain(&d);
            Ok(DENIED)
        }
        Err(e) => bail!("{at}:{reference}: {e}"),
    }
}

fn explain(d: &PolicyDecision) {
    println!("decision  {d}");
    println!("outcome   {}", d.outcome.as_str());
    for k in &d.keys {
        println!("key       {k}");
    }
    if let Some(scan) = &d.scan {
        println!("scan      {scan}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_split_into_upstream_repository_and_reference() {
        let ups = ["docker.io", "127.0.0.1:5000"];
        let cases = [
            ("docker.io/team/app:v1", Some("docker.io"), "team/app", "v1"),
            ("127.0.0.1:5000/team/app", Some("127.0.0.1:5000"), "team/app", "latest"),
            ("team/app:v2", None, "team/app", "v2"),
            (
                "docker.io/a@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                Some("docker.io"),
                "a",
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
        ];
        for (image, up, repo, reference) in cases {
            let (u, r, rf) = split_image(image, &ups).unwrap();
            assert_eq!(
                (u, r.as_str(), rf.to_string().as_str()),
                (up, repo, reference),
                "{image}"
            );
        }
        assert!(split_image("docker.io/Bad Name:v1", &ups).is_err());
        assert!(split_image("docker.io/a:-bad", &ups).is_err());
    }
}
