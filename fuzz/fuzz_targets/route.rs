//! `Route::parse` and `Query::parse`: the first byte picks the method, the rest is the
//! request target. A routed request must render back to exactly its path.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use pullgate_server::{Query, Route, RouteError, MAX_SCOPES, ROUTE_LABELS};

const METHODS: &[Method] = &[
    Method::GET,
    Method::HEAD,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, target)) = data.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let method = &METHODS[usize::from(pick) % METHODS.len()];
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let read = *method == Method::GET || *method == Method::HEAD;
    let route = match Route::parse(method, path) {
        Ok(route) => route,
        Err(e) => {
            assert!(ROUTE_LABELS.contains(&e.label()));
            if let RouteError::Unsupported(_) = e {
                assert!(path.starts_with("/v2"), "{path:?}");
            }
            return check_query(query);
        }
    };
    assert!(ROUTE_LABELS.contains(&route.label()));
    let rendered = match &route {
        Route::Base => {
            assert!(path == "/v2" || path == "/v2/");
            None
        }
        Route::Manifest {
            name,
            reference,
            head,
        } => {
            assert!(read && *head == (*method == Method::HEAD));
            Some(format!("/v2/{name}/manifests/{reference}"))
        }
        Route::Blob { name, digest, head } => {
            assert!(read && *head == (*method == Method::HEAD));
            Some(format!("/v2/{name}/blobs/{digest}"))
        }
        Route::Tags { name } => {
            assert_eq!(*method, Method::GET);
            Some(format!("/v2/{name}/tags/list"))
        }
        Route::Referrers { name, digest } => {
            assert_eq!(*method, Method::GET);
            Some(format!("/v2/{name}/referrers/{digest}"))
        }
        Route::Token => {
            assert_eq!(*method, Method::GET);
            Some("/token".into())
        }
        Route::Healthz => Some("/healthz".into()),
        Route::Readyz => Some("/readyz".into()),
        Route::Metrics => Some("/metrics".into()),
    };
    if let Some(rendered) = rendered {
        assert_eq!(rendered, path);
    }
    if matches!(route, Route::Healthz | Route::Readyz | Route::Metrics) {
        assert!(read);
    }
    check_query(query);
});

fn check_query(query: Option<&str>) {
    let q = Query::parse(query);
    assert!(q.scopes.len() <= MAX_SCOPES);
    assert!(q.scopes.iter().all(|s| !s.is_empty() && !s.contains(' ')));
    assert!(q.ns.as_ref().is_none_or(|ns| !ns.is_empty()));
    for pair in q.forward.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        assert!(matches!(key, "n" | "last" | "artifactType"), "{pair}");
    }
}
