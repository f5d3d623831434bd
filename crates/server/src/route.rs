//! `Route::parse`: what a request asks for, from its method, path and query.

use pullgate_oci::{Digest, NameError, Reference, RepoName};

/// Longest path we route; longer requests are refused before any parsing.
const MAX_PATH: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/`
    Base,
    Manifest {
        name: RepoName,
        reference: Reference,
        head: bool,
    },
    Blob {
        name: RepoName,
        digest: Digest,
        head: bool,
    },
    Tags {
        name: RepoName,
    },
    Referrers {
        name: RepoName,
        digest: Digest,
    },
    /// Liveness: the process answers HTTP.
    Healthz,
    /// Readiness: the cache is writable and client credentials are loaded.
    Readyz,
    /// `GET /token`: the Docker token endpoint (when the token scheme is on).
    Token,
    /// Prometheus metrics.
    Metrics,
}

/// Why a request cannot be routed; each maps to one OCI error in `ApiError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{0}")]
    NameInvalid(String),
    #[error("{0}")]
    DigestInvalid(String),
    /// A reference that is no digest and no valid tag: no such manifest can exist, so it
    /// is answered as an unknown manifest (as Distribution does), not as a bad request.
    #[error("{0}")]
    TagInvalid(String),
    /// Writes and catalog: a read-only mirror does not do them.
    #[error("{0}")]
    Unsupported(String),
    #[error("not found")]
    NotFound,
    /// The path is longer than any valid request's: 414, not a guess at what was meant.
    #[error("request path longer than {MAX_PATH} bytes")]
    PathTooLong,
}

/// The query parameters the mirror reads; everything else is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// containerd's `ns=<registry host>`.
    pub ns: Option<String>,
    /// `n`, `last` (tags list) and `artifactType` (referrers), re-encoded for the upstream.
    pub forward: String,
    /// `scope=` values of a token request, decoded (at most [`MAX_SCOPES`]).
    pub scopes: Vec<String>,
}

/// Scopes honoured in one token request; a client asks for one or two.
pub const MAX_SCOPES: usize = 16;

/// Every value [`Route::label`] and [`RouteError::label`] can return, for metrics.
pub const ROUTE_LABELS: [&str; 11] = [
    "base",
    "manifest",
    "blob",
    "tags",
    "referrers",
    "token",
    "metrics",
    "healthz",
    "readyz",
    "unsupported",
    "invalid",
];

impl RouteError {
    /// The metrics label of a request that could not be routed.
    pub fn label(&self) -> &'static str {
        match self {
            RouteError::Unsupported(_) => "unsupported",
            _ => "invalid",
        }
    }
}

impl Route {
    /// A fixed label for metrics: never a repository name or anything else a client chose.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Tags { .. } => "tags",
            Route::Referrers { .. } => "referrers",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Token => "token",
            Route::Metrics => "metrics",
        }
    }

    pub fn parse(method: &http::Method, path: &str) -> Result<Route, RouteError> {
        use http::Method;
        if path.len() > MAX_PATH {
            return Err(RouteError::PathTooLong);
        }
        let read = *method == Method::GET || *method == Method::HEAD;
        let head = *method == Method::HEAD;
        match path {
            "/healthz" if read => return Ok(Route::Healthz),
            "/readyz" if read => return Ok(Route::Readyz),
            "/token" if *method == Method::GET => return Ok(Route::Token),
            "/metrics" if read => return Ok(Route::Metrics),
            "/v2" | "/v2/" if read => return Ok(Route::Base),
            "/v2" | "/v2/" => return Err(unsupported(method)),
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Err(RouteError::NotFound);
        };
        if rest == "_catalog" {
            return Err(RouteError::Unsupported(
                "the catalog is not served by a mirror".into(),
            ));
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads"
            || n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads"
        {
            return Err(RouteError::Unsupported(
                "uploads: pullgate is a read-only mirror".into(),
            ));
        }
        let name = |upto: usize| {
            RepoName::parse(&segs[..upto].join("/"))
                .map_err(|e| RouteError::NameInvalid(e.to_string()))
        };
        if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
            let name = name(n - 2)?;
            return if *method == Method::GET {
                Ok(Route::Tags { name })
            } else {
                Err(unsupported(method))
            };
        }
        if n < 3 {
            return Err(RouteError::NotFound);
        }
        let last = segs[n - 1];
        match segs[n - 2] {
            "manifests" => {
                let name = name(n - 2)?;
                if !read {
                    return Err(unsupported(method));
                }
                let reference = Reference::parse(last).map_err(|e| match e {
                    NameError::BadDigest(d) => RouteError::DigestInvalid(d.to_string()),
                    e => RouteError::TagInvalid(e.to_string()),
                })?;
                Ok(Route::Manifest {
                    name,
                    reference,
                    head,
                })
            }
            "blobs" => {
                let name = name(n - 2)?;
                if !read {
                    return Err(unsupported(method));
                }
                let digest =
                    Digest::parse(last).map_err(|e| RouteError::DigestInvalid(e.to_string()))?;
                Ok(Route::Blob { name, digest, head })
            }
            "referrers" => {
                let name = name(n - 2)?;
                if *method != Method::GET {
                    return Err(unsupported(method));
                }
                let digest =
                    Digest::parse(last).map_err(|e| RouteError::DigestInvalid(e.to_string()))?;
                Ok(Route::Referrers { name, digest })
            }
            _ => Err(RouteError::NotFound),
        }
    }
}

fn unsupported(method: &http::Method) -> RouteError {
    RouteError::Unsupported(format!("{method} is not supported by a read-only mirror"))
}

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        let mut q = Query::default();
        let mut forward = Vec::new();
        for pair in query.unwrap_or("").split('&').take(32) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "ns" => q.ns = percent_decode(v),
                "scope" if q.scopes.len() < MAX_SCOPES => {
                    // Form encoding: `+` is a space, which separates scopes too.
                    if let Some(v) = percent_decode(&v.replace('+', " ")) {
                        q.scopes
                            .extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_owned));
                        q.scopes.truncate(MAX_SCOPES);
                    }
                }
                // Forward verbatim: the client already encoded them for a registry.
                "n" | "last" | "artifactType" => forward.push(pair),
                _ => {}
            }
        }
        q.forward = forward.join("&");
        q
    }
}

/// Decode `%XX` escapes (containerd sends `ns=host%3A5000`); `None` if malformed.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        let component = "[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,2}";
        proptest::collection::vec(component, 1..6).prop_map(|c| c.join("/"))
    }

    fn digest() -> impl Strategy<Value = String> {
        prop_oneof!["sha256:[0-9a-f]{64}", "sha512:[0-9a-f]{128}"]
    }

    fn reference() -> impl Strategy<Value = String> {
        prop_oneof!["[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}", digest()]
    }

    fn method() -> impl Strategy<Value = Method> {
        proptest::sample::select(vec![
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ])
    }

    /// The path a route was parsed from, for the routes that have only one.
    fn path_of(route: &Route) -> Option<String> {
        Some(match route {
            Route::Manifest {
                name, reference, ..
            } => format!("/v2/{name}/manifests/{reference}"),
            Route::Blob { name, digest, .. } => format!("/v2/{name}/blobs/{digest}"),
            Route::Tags { name } => format!("/v2/{name}/tags/list"),
            Route::Referrers { name, digest } => format!("/v2/{name}/referrers/{digest}"),
            Route::Healthz => "/healthz".into(),
            Route::Readyz => "/readyz".into(),
            Route::Token => "/token".into(),
            Route::Metrics => "/metrics".into(),
            Route::Base => return None,
        })
    }

    /// Paths made of the words the router looks for, valid pieces and junk.
    fn path() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            proptest::sample::select(vec![
                "v2",
                "manifests",
                "blobs",
                "tags",
                "list",
                "uploads",
                "referrers",
                "_catalog",
                "",
                "..",
                ".",
                "%2F",
                "healthz",
            ])
            .prop_map(str::to_owned),
            name(),
            reference(),
            "\\PC{0,8}",
        ];
        let words = proptest::collection::vec(segment, 0..8);
        let last = prop_oneof![
            reference(),
            proptest::sample::select(vec!["list", "uploads", ""]).prop_map(str::to_owned),
            "\\PC{0,8}",
        ];
        let kind =
            proptest::sample::select(vec!["manifests", "blobs", "tags", "referrers", "uploads"]);
        prop_oneof![
            (words.clone(), any::<bool>()).prop_map(|(s, v2)| {
                let path = format!("/{}", s.join("/"));
                if v2 {
                    format!("/v2{path}")
                } else {
                    path
                }
            }),
            // Shaped like a registry request, so that many of them route.
            (name(), words, kind, last).prop_map(|(n, w, kind, last)| {
                let middle: String = w.iter().take(2).map(|s| format!("/{s}")).collect();
                format!("/v2/{n}{middle}/{kind}/{last}")
            }),
        ]
    }

    proptest! {
        #[test]
        fn manifest_paths_give_back_name_and_reference(
            n in name(), r in reference(), m in method(),
        ) {
            let path = format!("/v2/{n}/manifests/{r}");
            let parsed = Route::parse(&m, &path);
            if m == Method::GET || m == Method::HEAD {
                prop_assert_eq!(parsed, Ok(Route::Manifest {
                    name: RepoName::parse(&n).unwrap(),
                    reference: Reference::parse(&r).unwrap(),
                    head: m == Method::HEAD,
                }));
            } else {
                prop_assert!(matches!(parsed, Err(RouteError::Unsupported(_))));
            }
        }

        #[test]
        fn blob_tag_and_referrer_paths_give_back_their_parts(
            n in name(), d in digest(), m in method(),
        ) {
            let name = RepoName::parse(&n).unwrap();
            let digest = Digest::parse(&d).unwrap();
            let read = m == Method::GET || m == Method::HEAD;
            let blob = Route::parse(&m, &format!("/v2/{n}/blobs/{d}"));
            let tags = Route::parse(&m, &format!("/v2/{n}/tags/list"));
            let referrers = Route::parse(&m, &format!("/v2/{n}/referrers/{d}"));
            if read {
                prop_assert_eq!(blob, Ok(Route::Blob {
                    name: name.clone(),
                    digest: digest.clone(),
                    head: m == Method::HEAD,
                }));
            } else {
                prop_assert!(matches!(blob, Err(RouteError::Unsupported(_))));
            }
            if m == Method::GET {
                prop_assert_eq!(tags, Ok(Route::Tags { name: name.clone() }));
                prop_assert_eq!(referrers, Ok(Route::Referrers { name, digest }));
            } else {
                prop_assert!(matches!(tags, Err(RouteError::Unsupported(_))));
                prop_assert!(matches!(referrers, Err(RouteError::Unsupported(_))));
            }
        }

        #[test]
        fn uploads_are_refused_whatever_the_method(n in name(), m in method(), id in "[a-z0-9-]{0,36}") {
            let parsed = Route::parse(&m, &format!("/v2/{n}/blobs/uploads/{id}"));
            prop_assert!(matches!(parsed, Err(RouteError::Unsupported(_))), "{parsed:?}");
        }

        #[test]
        fn bad_names_and_references_are_told_apart(
            n in name(),
            r in reference(),
            at in any::<proptest::sample::Index>(),
            bad in "[A-Z]|\\.\\.|___|[^a-z0-9._/-]",
            junk in "[^A-Za-z0-9_./-]",
        ) {
            let i = at.index(n.len() + 1);
            let broken = format!("{}{bad}{}", &n[..i], &n[i..]);
            // Any request shape: the name is checked first.
            for path in [
                format!("/v2/{broken}/manifests/{r}"),
                format!("/v2/{broken}/tags/list"),
            ] {
                let parsed = Route::parse(&Method::GET, &path);
                prop_assert!(matches!(parsed, Err(RouteError::NameInvalid(_))), "{path}: {parsed:?}");
            }
            let bad_ref = format!("{r}{junk}");
            let parsed = Route::parse(&Method::GET, &format!("/v2/{n}/manifests/{bad_ref}"));
            prop_assert!(matches!(
                parsed,
                Err(RouteError::TagInvalid(_) | RouteError::DigestInvalid(_))
            ), "{bad_ref}: {parsed:?}");
        }

        #[test]
        fn any_path_routes_to_itself_or_a_labelled_error(p in path(), m in method()) {
            match Route::parse(&m, &p) {
                Ok(route) => {
                    prop_assert!(ROUTE_LABELS.contains(&route.label()));
                    match path_of(&route) {
                        Some(rendered) => prop_assert_eq!(rendered, p),
                        None => prop_assert!(p == "/v2" || p == "/v2/"),
                    }
                }
                Err(e) => prop_assert!(ROUTE_LABELS.contains(&e.label())),
            }
        }

        #[test]
        fn long_paths_are_refused_before_routing(n in name(), extra in 0usize..64) {
            let long = format!("/v2/{n}/{}manifests/latest", "a/".repeat(MAX_PATH / 2 + extra));
            prop_assert!(matches!(Route::parse(&Method::GET, &long), Err(RouteError::PathTooLong)));
        }

        #[test]
        fn query_values_are_decoded(
            ns in "\\PC{1,30}",
            scopes in proptest::collection::vec("repository:[a-z0-9/]{1,20}:pull", 1..24),
            noise in "x[a-z]{0,7}=[a-z0-9%+]{0,8}",
            n in 0u32..1000,
        ) {
            let encoded: String = ns.bytes().map(|b| format!("%{b:02X}")).collect();
            let mut pairs = vec![format!("ns={encoded}"), noise, format!("n={n}")];
            // Half the scopes one per parameter, the rest space-separated in one.
            let (one_each, together) = scopes.split_at(scopes.len() / 2);
            pairs.extend(one_each.iter().map(|s| format!("scope={s}")));
            if !together.is_empty() {
                pairs.push(format!("scope={}", together.join("+")));
            }
            let q = Query::parse(Some(&pairs.join("&")));
            prop_assert_eq!(q.ns.as_deref(), Some(ns.as_str()));
            prop_assert_eq!(q.forward, format!("n={n}"));
            let kept = scopes.len().min(MAX_SCOPES);
            prop_assert_eq!(&q.scopes[..], &scopes[..kept]);
        }

        #[test]
        fn any_query_parses_within_bounds(s in "\\PC{0,200}|([a-zA-Z]{1,6}=[a-z0-9%+:]{0,10}&){0,40}") {
            let q = Query::parse(Some(&s));
            prop_assert!(q.scopes.len() <= MAX_SCOPES);
            prop_assert!(q.scopes.iter().all(|s| !s.is_empty() && !s.contains(' ')));
            prop_assert!(q.ns.as_ref().is_none_or(|ns| !ns.is_empty()));
            for pair in q.forward.split('&').filter(|p| !p.is_empty()) {
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                prop_assert!(matches!(key, "n" | "last" | "artifactType"), "{pair}");
            }
        }
    }

    fn d() -> String {
        format!("sha256:{}", "a".repeat(64))
    }

    #[test]
    fn table() {
        let get = Method::GET;
        let ok = |m: &Method, p: &str| Route::parse(m, p).unwrap();
        assert_eq!(ok(&get, "/v2/"), Route::Base);
        assert_eq!(ok(&get, "/v2"), Route::Base);
        assert!(matches!(
            ok(&Method::HEAD, "/v2/library/alpine/manifests/latest"),
            Route::Manifest { head: true, .. }
        ));
        match ok(&get, "/v2/a/manifests/b/manifests/1.0") {
            Route::Manifest { name, .. } => assert_eq!(name.as_str(), "a/manifests/b"),
            r => panic!("{r:?}"),
        }
        match ok(&get, &format!("/v2/team/app/api/blobs/{}", d())) {
            Route::Blob { name, .. } => assert_eq!(name.as_str(), "team/app/api"),
            r => panic!("{r:?}"),
        }
        assert!(matches!(ok(&get, "/v2/x/tags/list"), Route::Tags { .. }));
        assert!(matches!(
            ok(&get, &format!("/v2/x/referrers/{}", d())),
            Route::Referrers { .. }
        ));

        let err = |m: &Method, p: &str| Route::parse(m, p).unwrap_err();
        assert!(matches!(
            err(&get, "/v2/UPPER/manifests/x"),
            RouteError::NameInvalid(_)
        ));
        assert!(matches!(
            err(&get, "/v2/a/blobs/sha256:zz"),
            RouteError::DigestInvalid(_)
        ));
        assert!(matches!(
            err(&get, "/v2/a/manifests/sha256:zz"),
            RouteError::DigestInvalid(_)
        ));
        assert!(matches!(
            err(&get, "/v2/a/manifests/-bad"),
            RouteError::TagInvalid(_)
        ));
        assert!(matches!(
            err(&Method::PUT, "/v2/a/manifests/x"),
            RouteError::Unsupported(_)
        ));
        assert!(matches!(
            err(&Method::DELETE, &format!("/v2/a/blobs/{}", d())),
            RouteError::Unsupported(_)
        ));
        assert!(matches!(
            err(&Method::POST, "/v2/a/blobs/uploads/"),
            RouteError::Unsupported(_)
        ));
        assert!(matches!(
            err(&Method::PATCH, "/v2/a/blobs/uploads/uuid"),
            RouteError::Unsupported(_)
        ));
        assert!(matches!(
            err(&get, "/v2/_catalog"),
            RouteError::Unsupported(_)
        ));
        assert!(matches!(err(&get, "/v2/a/b"), RouteError::NotFound));
        assert!(matches!(err(&get, "/elsewhere"), RouteError::NotFound));
        assert!(matches!(
            err(&get, "/v2/../etc/manifests/x"),
            RouteError::NameInvalid(_)
        ));
        assert!(matches!(
            err(&get, "/v2/a%2Fb/manifests/x"),
            RouteError::NameInvalid(_)
        ));
    }

    #[test]
    fn query() {
        let q = Query::parse(Some("ns=myreg.example%3A5000&n=10&last=b&x=y"));
        assert_eq!(q.ns.as_deref(), Some("myreg.example:5000"));
        assert_eq!(q.forward, "n=10&last=b");
        assert_eq!(Query::parse(Some("ns=%zz")).ns, None);
        assert_eq!(Query::parse(None), Query::default());
        let q = Query::parse(Some(
            "service=pullgate&scope=repository%3Alibrary%2Falpine%3Apull&scope=repository:127.0.0.1:5001/a/b:pull+repository:c:pull",
        ));
        assert_eq!(
            q.scopes,
            [
                "repository:library/alpine:pull",
                "repository:127.0.0.1:5001/a/b:pull",
                "repository:c:pull"
            ]
        );
        let many = vec!["scope=repository:a:pull"; 40].join("&");
        assert_eq!(Query::parse(Some(&many)).scopes.len(), MAX_SCOPES);
    }
}
