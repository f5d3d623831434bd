//! `[[prefetch]]`: images kept warm from the configuration. Each rule's images (a tag, a
//! digest, or a tag pattern resolved through the upstream's tags list) are replayed
//! through the normal fill path, [`Mirror::manifest`] then [`Mirror::blob`] for every
//! config and layer of the selected platforms, at start-up and every `interval`, as a
//! client pull would: a fresh tag costs nothing, a stale one a `HEAD`, new content a fill.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pullgate_oci::{media_types, AcceptList, ManifestInfo, Platform, Reference, RepoName, Tag};
use tokio_util::sync::CancellationToken;

use crate::blobs::ClientId;
use crate::error::MirrorError;
use crate::stats::Stats;
use crate::{Mirror, Target};

/// Tags a pattern may expand to in one round, so a pattern like `*` on a repository with
/// thousands of tags cannot turn a round into thousands of pulls.
pub const MAX_TAGS_PER_PATTERN: usize = 256;
/// Pages of a paginated tags list followed at most, per pattern, and tags asked per page.
pub const MAX_TAG_PAGES: usize = 50;
const TAG_PAGE: usize = 100;
/// The largest tags list read (it is held in memory to be matched).
const TAGS_LIST_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("{0:?}: {1}")]
    Image(String, String),
    #[error("platform {0:?} is not os/arch[/variant] or \"all\"")]
    Platform(String),
    #[error("no platform given (\"all\" for every platform)")]
    NoPlatform,
}

/// How an image's tag is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagPattern {
    /// One tag or digest.
    Exact(Reference),
    /// A glob over the upstream's tags: `*` any run of characters, `?` one.
    Glob(String),
}

/// An image, written as a client names it to the mirror: `docker.io/library/alpine:3.*`,
/// `ghcr.io/org/app:v1.2.3`, `alpine@sha256:…`, `registry.local:5000/team/app:1.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePattern {
    pub written: String,
    /// The registry host, when the first component is one (routed like `?ns=`).
    pub host: Option<String>,
    pub name: RepoName,
    pub tag: TagPattern,
}

impl ImagePattern {
    pub fn parse(s: &str) -> Result<ImagePattern, PatternError> {
        let bad = |why: String| PatternError::Image(s.to_owned(), why);
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (s, None),
        };
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        let tag = match (digest, tag) {
            (Some(d), _) => {
                TagPattern::Exact(Reference::parse(d).map_err(|e| bad(format!("digest: {e}")))?)
            }
            (None, Some(t)) if t.contains(['*', '?']) => {
                // The pattern with its wildcards as tag characters must be a tag.
                Tag::parse(&t.replace(['*', '?'], "x"))
                    .map_err(|_| bad("the tag pattern is not a tag with * or ?".into()))?;
                TagPattern::Glob(t.to_owned())
            }
            (None, Some(t)) => TagPattern::Exact(Reference::Tag(
                Tag::parse(t).map_err(|e| bad(e.to_string()))?,
            )),
            (None, None) => return Err(bad("name a tag (or a pattern, or a digest)".into())),
        };
        let (host, name) = match path.split_once('/') {
            Some((first, repo)) if looks_like_host(first) => (Some(first.to_owned()), repo),
            _ => (None, path),
        };
        let name = RepoName::parse(name).map_err(|e| bad(e.to_string()))?;
        Ok(ImagePattern {
            written: s.to_owned(),
            host,
            name,
            tag,
        })
    }
}

fn looks_like_host(s: &str) -> bool {
    s.contains('.') || s.contains(':') || s == "localhost"
}

/// Which children of an index are pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platforms {
    All,
    /// `(os, architecture, variant)`; a missing variant matches any.
    Some(Vec<(String, String, Option<String>)>),
}

impl Platforms {
    /// `["all"]`, or `os/arch[/variant]` strings.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Platforms, PatternError> {
        if list.iter().any(|p| p.as_ref().trim() == "all") {
            return Ok(Platforms::All);
        }
        let ok = |x: &str| {
            !x.is_empty()
                && x.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        let parsed = list
            .iter()
            .map(|p| {
                let p = p.as_ref().trim();
                match p.split('/').collect::<Vec<_>>().as_slice() {
                    [os, arch] if ok(os) && ok(arch) => {
                        Ok((os.to_string(), arch.to_string(), None))
                    }
                    [os, arch, v] if ok(os) && ok(arch) && ok(v) => {
                        Ok((os.to_string(), arch.to_string(), Some(v.to_string())))
                    }
                    _ => Err(PatternError::Platform(p.to_owned())),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if parsed.is_empty() {
            return Err(PatternError::NoPlatform);
        }
        Ok(Platforms::Some(parsed))
    }

    pub fn selects(&self, p: Option<&Platform>) -> bool {
        match (self, p) {
            (Platforms::All, _) => true,
            (Platforms::Some(_), None) => false,
            (Platforms::Some(list), Some(p)) => list.iter().any(|(os, arch, variant)| {
                *os == p.os
                    && *arch == p.architecture
                    && variant
                        .as_ref()
                        .is_none_or(|v| p.variant.as_deref() == Some(v.as_str()))
            }),
        }
    }

    /// As the configuration writes them.
    pub fn to_strings(&self) -> Vec<String> {
        match self {
            Platforms::All => vec!["all".to_owned()],
            Platforms::Some(list) => list
                .iter()
                .map(|(os, arch, v)| match v {
                    Some(v) => format!("{os}/{arch}/{v}"),
                    None => format!("{os}/{arch}"),
                })
                .collect(),
        }
    }
}

/// One `[[prefetch]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchRule {
    pub images: Vec<ImagePattern>,
    pub platforms: Platforms,
    pub interval: Duration,
}

/// `*` matches any run of characters, `?` one; everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

const ALL_MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

impl Mirror {
    /// Resolve a pattern's upstream (as a request for it would be routed).
    pub fn prefetch_target(&self, image: &ImagePattern) -> Result<Target, MirrorError> {
        self.route(image.host.as_deref(), &image.name)
    }

    /// Keep `rule`'s images warm: one round now, then one every `interval`, until `stop`.
    /// A round in progress when `stop` fires is abandoned; fills it started finish in
    /// their own tasks, as a client's do.
    pub async fn prefetch_loop(self: Arc<Self>, rule: PrefetchRule, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.prefetch_round(&rule) => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(rule.interval) => {}
            }
        }
    }

    /// One pass over a rule's images; every image pulled counts as refreshed or failed.
    pub async fn prefetch_round(&self, rule: &PrefetchRule) {
        for pattern in &rule.images {
            let target = match self.prefetch_target(pattern) {
                Ok(t) => t,
                Err(e) => {
                    self.prefetch_failed(pattern, None, &e);
                    continue;
                }
            };
            let references = match &pattern.tag {
                TagPattern::Exact(r) => vec![r.clone()],
                TagPattern::Glob(g) => match self.matching_tags(&target, g).await {
                    Ok(tags) => tags.into_iter().map(Reference::Tag).collect(),
                    Err(e) => {
                        self.prefetch_failed(pattern, None, &e);
                        continue;
                    }
                },
            };
            for reference in references {
                match self
                    .prefetch_image(&target, &reference, &rule.platforms)
                    .await
                {
                    Ok(blobs) => {
                        Stats::inc(&self.stats.prefetch_refreshed);
                        tracing::debug!(
                            image = %pattern.written,
                            reference = %reference,
                            blobs,
                            "prefetched"
                        );
                    }
                    Err(e) => self.prefetch_failed(pattern, Some(&reference), &e),
                }
            }
        }
    }

    fn prefetch_failed(&self, p: &ImagePattern, r: Option<&Reference>, e: &MirrorError) {
        Stats::inc(&self.stats.prefetch_failed);
        tracing::warn!(
            image = %p.written,
            reference = r.map(|r| r.to_string()).unwrap_or_default(),
            error = %e,
            "prefetch failed"
        );
    }

    /// The upstream's tags matching `glob`, sorted, at most [`MAX_TAGS_PER_PATTERN`]. A
    /// paginated list is followed through its `Link: <…?n=…&last=…>; rel="next"`, at most
    /// [`MAX_TAG_PAGES`] pages.
    async fn matching_tags(&self, target: &Target, glob: &str) -> Result<Vec<Tag>, MirrorError> {
        let mut tags: Vec<Tag> = Vec::new();
        // Docker Hub's page size; a registry that ignores `n` answers in one page.
        let mut query = format!("n={TAG_PAGE}");
        for _ in 0..MAX_TAG_PAGES {
            let list = self.tags_list(target, &query).await?;
            if list.status != 200 {
                return Err(MirrorError::UpstreamBadContent(format!(
                    "the tags list answered {}",
                    list.status
                )));
            }
            if list.body.len() > TAGS_LIST_LIMIT {
                return Err(MirrorError::UpstreamBadContent(
                    "the tags list is too large".into(),
                ));
            }
            let doc: serde_json::Value = serde_json::from_slice(&list.body)
                .map_err(|_| MirrorError::UpstreamBadContent("the tags list is not JSON".into()))?;
            tags.extend(
                doc["tags"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|t| t.as_str()).collect::<Vec<_>>())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| glob_match(glob, t))
                    .filter_map(|t| Tag::parse(t).ok()),
            );
            match list.link.as_deref().and_then(next_page_query) {
                Some(next) if next != query => query = next,
                _ => break,
            }
        }
        tags.sort();
        if tags.len() > MAX_TAGS_PER_PATTERN {
            tracing::warn!(
                repository = %target.repo,
                pattern = glob,
                matched = tags.len(),
                kept = MAX_TAGS_PER_PATTERN,
                "prefetch: the pattern matches too many tags; the last ones in order are kept"
            );
            tags.drain(..tags.len() - MAX_TAGS_PER_PATTERN);
        }
        Ok(tags)
    }

    /// Pull one image through the mirror as a client would; returns the blobs pulled.
    async fn prefetch_image(
        &self,
        target: &Target,
        reference: &Reference,
        platforms: &Platforms,
    ) -> Result<usize, MirrorError> {
        let accept = AcceptList::from_headers([ALL_MANIFEST_TYPES]);
        let top = self.manifest(target, reference, &accept).await?;
        let info = parse(&top.bytes, &top.media_type)?;
        let mut images = Vec::new();
        if info.is_index() {
            let children: Vec<_> = info
                .descriptors
                .iter()
                .filter(|d| platforms.selects(d.platform.as_ref()))
                .collect();
            if children.is_empty() {
                return Err(MirrorError::ManifestUnknown(
                    "the index has none of the configured platforms".into(),
                ));
            }
            for child in children {
                let m = self
                    .manifest(target, &Reference::Digest(child.digest.clone()), &accept)
                    .await?;
                if !media_types::is_index(&m.media_type) {
                    images.push(parse(&m.bytes, &m.media_type)?);
                }
            }
        } else {
            images.push(info);
        }
        let mut digests: Vec<_> = images
            .iter()
            .flat_map(|m| m.descriptors.iter().map(|d| d.digest.clone()))
            .collect();
        digests.sort();
        digests.dedup();
        for digest in &digests {
            let b = self
                .blob(target, digest, None, false, &ClientId::Prefetch)
                .await?;
            if let Some(mut body) = b.body {
                while let Some(chunk) = body.next().await {
                    chunk?;
                }
            }
        }
        Ok(digests.len())
    }
}

fn parse(bytes: &[u8], media_type: &str) -> Result<ManifestInfo, MirrorError> {
    ManifestInfo::parse(bytes, Some(media_type))
        .map_err(|e| MirrorError::UpstreamBadContent(format!("manifest: {e}")))
}

/// The query of a tags list's next page, from its `Link` header:
/// `</v2/<name>/tags/list?n=100&last=v1.2>; rel="next"` gives `n=100&last=v1.2`.
fn next_page_query(link: &str) -> Option<String> {
    let (target, params) = link.split_once('>')?;
    if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
        return None;
    }
    let (_, query) = target.trim_start().strip_prefix('<')?.split_once('?')?;
    (!query.is_empty() && query.len() <= 1024).then(|| query.to_owned())
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        assert_eq!(
            super::next_page_query("</v2/e2e/pre/tags/list?n=2&last=3.2>; rel=\"next\"").as_deref(),
            Some("n=2&last=3.2")
        );
        assert_eq!(
            super::next_page_query("</v2/x/tags/list?n=2>; rel=\"prev\""),
            None
        );
        assert_eq!(super::next_page_query("garbage"), None);
    }

    use super::*;

    #[test]
    fn globs() {
        for (p, t) in [
            ("3.*", "3.1"),
            ("3.*", "3."),
            ("*", "x"),
            ("v?.1", "v2.1"),
            ("*-alpine", "3.20-alpine"),
            ("a*b*c", "abbbc"),
        ] {
            assert!(glob_match(p, t), "{p} {t}");
        }
        for (p, t) in [
            ("3.*", "4.0"),
            ("3.*", "13.1"),
            ("v?.1", "v10.1"),
            ("a*b*c", "abca"),
            ("x", ""),
        ] {
            assert!(!glob_match(p, t), "{p} {t}");
        }
    }

    #[test]
    fn patterns() {
        let p = ImagePattern::parse("docker.io/library/alpine:3.*").unwrap();
        assert_eq!(p.host.as_deref(), Some("docker.io"));
        assert_eq!(p.name.as_str(), "library/alpine");
        assert_eq!(p.tag, TagPattern::Glob("3.*".into()));
        let p = ImagePattern::parse("127.0.0.1:5000/e2e/pre:v1.2.3").unwrap();
        assert_eq!(p.host.as_deref(), Some("127.0.0.1:5000"));
        assert!(matches!(p.tag, TagPattern::Exact(Reference::Tag(_))));
        let p = ImagePattern::parse(&format!("alpine@sha256:{}", "b".repeat(64))).unwrap();
        assert_eq!((p.host, p.name.as_str()), (None, "alpine"));
        assert!(matches!(p.tag, TagPattern::Exact(Reference::Digest(_))));
        for bad in ["alpine", "Alpine:1", "a:3.[0-9]", "a:", "ghcr.io/:1"] {
            assert!(ImagePattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms() {
        assert_eq!(Platforms::parse(&["all"]).unwrap(), Platforms::All);
        let p = Platforms::parse(&["linux/amd64", "linux/arm/v7"]).unwrap();
        assert_eq!(p.to_strings(), ["linux/amd64", "linux/arm/v7"]);
        let plat = |a: &str, v: Option<&str>| Platform {
            os: "linux".into(),
            architecture: a.into(),
            variant: v.map(str::to_owned),
        };
        assert!(p.selects(Some(&plat("amd64", None))));
        assert!(!p.selects(Some(&plat("arm", Some("v6")))));
        assert!(!p.selects(None));
        assert!(Platforms::parse::<&str>(&[]).is_err());
        assert!(Platforms::parse(&["linux"]).is_err());
    }
}
