use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use proptest::prelude::*;
use pullgate_credentials::SecretSource;

use super::*;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", b64(&format!("{user}:{password}")))
}

fn peer(n: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, n])
}

fn access(upstream: &str, repo: &str) -> Access {
    Access {
        upstream: upstream.into(),
        repo: repo.into(),
    }
}

fn config() -> AuthConfig {
    AuthConfig {
        scheme: Scheme::Basic,
        anonymous: false,
        mirror_hosts: vec!["mirror.example.com".into()],
        upstreams: vec!["docker.io".into(), "ghcr.io".into()],
        rules: vec![Rule {
            user: "ci".into(),
            patterns: vec!["docker.io/library/*".into()],
        }],
        service: "pullgate".into(),
        token_ttl: Duration::from_secs(300),
        signing_key: vec![7u8; 32],
        throttle: ThrottleConfig {
            max_failures: 3,
            ..ThrottleConfig::default()
        },
    }
}

const SECRET: &str = r#"{"auths":{
    "mirror.example.com": {"auth": "YWRtaW46YWRtaW4tcHc="},
    "https://index.docker.io/v1/": {"username": "ci", "password": "ci-pw"},
    "ghcr.io/team-a": {"username": "team", "password": "team-pw"},
    "quay.io": {"username": "quay", "password": "quay-pw"}
}}"#;

fn with_secret(config: AuthConfig, content: &str) -> (Authenticator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(&file, content).unwrap();
    let source = SecretSource::open(&file)
        .unwrap()
        .with_check_interval(Duration::ZERO);
    (Authenticator::new(config, vec![source]), dir)
}

#[test]
fn no_credentials_and_empty_basic_are_anonymous_requests() {
    let (a, _d) = with_secret(config(), SECRET);
    assert!(a.authenticate(None, peer(1)).unwrap().is_none());
    assert!(a.authenticate(Some(""), peer(1)).unwrap().is_none());
    assert!(a
        .authenticate(Some("Basic Og=="), peer(1))
        .unwrap()
        .is_none());
    assert!(matches!(
        a.authorize(None, &access("docker.io", "library/alpine")),
        Err(AuthError::Unauthorized)
    ));
    let open = AuthConfig {
        anonymous: true,
        ..config()
    };
    let (a, _d) = with_secret(open, SECRET);
    assert!(a.authorize(None, &access("ghcr.io", "x/y")).is_ok());
}

#[test]
fn basic_credentials_grant_by_their_key() {
    let (a, _d) = with_secret(config(), SECRET);
    let admin = a
        .authenticate(Some(&basic("admin", "admin-pw")), peer(1))
        .unwrap()
        .unwrap();
    assert_eq!(admin.user, "admin");
    assert!(a
        .authorize(Some(&admin), &access("ghcr.io", "any/thing"))
        .is_ok());
    assert!(a
        .authorize(Some(&admin), &access("docker.io", "library/x"))
        .is_ok());

    let team = a
        .authenticate(Some(&basic("team", "team-pw")), peer(1))
        .unwrap()
        .unwrap();
    assert!(a
        .authorize(Some(&team), &access("ghcr.io", "team-a/app"))
        .is_ok());
    assert!(a
        .authorize(Some(&team), &access("ghcr.io", "team-a/sub/app"))
        .is_ok());
    for denied in [
        access("ghcr.io", "team-b/app"),
        access("ghcr.io", "team-ab/app"),
        access("docker.io", "team-a/app"),
    ] {
        assert!(matches!(
            a.authorize(Some(&team), &denied),
            Err(AuthError::Denied)
        ));
    }
    // A key for a registry that is not an upstream here authenticates but grants nothing.
    let quay = a
        .authenticate(Some(&basic("quay", "quay-pw")), peer(1))
        .unwrap()
        .unwrap();
    assert!(matches!(
        a.authorize(Some(&quay), &access("docker.io", "library/x")),
        Err(AuthError::Denied)
    ));
}

#[test]
fn rules_narrow_a_user() {
    let (a, _d) = with_secret(config(), SECRET);
    let ci = a
        .authenticate(Some(&basic("ci", "ci-pw")), peer(1))
        .unwrap()
        .unwrap();
    assert!(a
        .authorize(Some(&ci), &access("docker.io", "library/alpine"))
        .is_ok());
    assert!(matches!(
        a.authorize(Some(&ci), &access("docker.io", "bitnami/redis")),
        Err(AuthError::Denied)
    ));
}

#[test]
fn wrong_credentials_are_refused_and_throttled_per_address() {
    let (a, _d) = with_secret(config(), SECRET);
    for attempt in [
        basic("admin", "wrong"),
        basic("nobody", "admin-pw"),
        "Basic !!!not-base64".to_owned(),
    ] {
        assert!(a.check_throttle(peer(9)).is_ok());
        assert!(matches!(
            a.authenticate(Some(&attempt), peer(9)),
            Err(AuthError::Unauthorized)
        ));
    }
    match a.check_throttle(peer(9)) {
        Err(AuthError::Throttled { retry_after }) => assert!(retry_after > Duration::ZERO),
        other => panic!("not throttled: {other:?}"),
    }
    // Elsewhere, the right password still works.
    assert!(a.check_throttle(peer(8)).is_ok());
    assert!(a
        .authenticate(Some(&basic("admin", "admin-pw")), peer(8))
        .unwrap()
        .is_some());
}

#[test]
fn tokens_carry_exactly_the_granted_access() {
    let cfg = AuthConfig {
        scheme: Scheme::Token,
        ..config()
    };
    let (a, _d) = with_secret(cfg.clone(), SECRET);
    let team = a
        .authenticate(Some(&basic("team", "team-pw")), peer(1))
        .unwrap()
        .unwrap();
    let issued = a.issue_token(
        &team,
        &[
            access("ghcr.io", "team-a/app"),
            access("ghcr.io", "team-b/app"),
        ],
    );
    assert_eq!(issued.expires_in, 300);
    assert!(issued.issued_at.starts_with("20"));
    assert!(!format!("{issued:?}").contains(&issued.token));

    let bearer = format!("Bearer {}", issued.token);
    let p = a.authenticate(Some(&bearer), peer(1)).unwrap().unwrap();
    assert_eq!(p.user, "team");
    assert!(p.via_token() && !team.via_token());
    assert!(a
        .authorize(Some(&p), &access("ghcr.io", "team-a/app"))
        .is_ok());
    assert!(matches!(
        a.authorize(Some(&p), &access("ghcr.io", "team-b/app")),
        Err(AuthError::Denied)
    ));
    assert!(matches!(
        a.authorize(Some(&p), &access("ghcr.io", "team-a/other")),
        Err(AuthError::Denied)
    ));

    // Tampered, foreign-key, wrong-audience and expired tokens are refused.
    let mut tampered = issued.token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let (other_key, _d2) = with_secret(
        AuthConfig {
            signing_key: vec![8u8; 32],
            ..cfg.clone()
        },
        SECRET,
    );
    let (other_aud, _d3) = with_secret(
        AuthConfig {
            service: "someone-else".into(),
            ..cfg.clone()
        },
        SECRET,
    );
    assert!(a
        .authenticate(Some(&format!("Bearer {tampered}")), peer(2))
        .is_err());
    assert!(other_key.authenticate(Some(&bearer), peer(2)).is_err());
    assert!(other_aud.authenticate(Some(&bearer), peer(2)).is_err());
    let claims = token::Claims {
        iss: "pullgate".into(),
        sub: "team".into(),
        aud: "pullgate".into(),
        exp: token::now_secs() - 1,
        nbf: token::now_secs() - 100,
        iat: token::now_secs() - 100,
        jti: "x".into(),
        access: vec![],
    };
    let expired = token::sign(&cfg.signing_key, &claims).unwrap();
    assert!(a
        .authenticate(Some(&format!("Bearer {expired}")), peer(3))
        .is_err());
    // An `alg: none` token with our claims is refused.
    let none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        expired.split('.').nth(1).unwrap()
    );
    assert!(a
        .authenticate(Some(&format!("Bearer {none}")), peer(4))
        .is_err());
}

#[test]
fn challenges() {
    let (basic_a, _d) = with_secret(config(), SECRET);
    assert_eq!(
        basic_a.challenge("http://m/token", None),
        "Basic realm=\"pullgate\""
    );
    let (token_a, _d) = with_secret(
        AuthConfig {
            scheme: Scheme::Token,
            ..config()
        },
        SECRET,
    );
    assert_eq!(
        token_a.challenge(
            "http://127.0.0.1:5000/token",
            Some(&access("127.0.0.1:5001", "e2e/app"))
        ),
        "Bearer realm=\"http://127.0.0.1:5000/token\",service=\"pullgate\",scope=\"repository:127.0.0.1:5001/e2e/app:pull\""
    );
}

#[test]
fn scopes() {
    assert_eq!(
        parse_scope("repository:127.0.0.1:5001/a/b:pull,push"),
        Some((
            "127.0.0.1:5001/a/b".into(),
            vec!["pull".into(), "push".into()]
        ))
    );
    assert_eq!(
        parse_scope("repository:library/alpine:pull"),
        Some(("library/alpine".into(), vec!["pull".into()]))
    );
    assert_eq!(parse_scope("registry:catalog:*"), None);
    assert_eq!(parse_scope("repository::pull"), None);
}

#[test]
fn rotation_is_followed() {
    let (a, dir) = with_secret(config(), SECRET);
    let file = dir.path().join("config.json");
    assert!(a
        .authenticate(Some(&basic("admin", "admin-pw")), peer(1))
        .unwrap()
        .is_some());
    // Rewritten with a different size so the change is seen even within one mtime tick.
    std::fs::write(
        &file,
        r#"{"auths":{"mirror.example.com":{"username":"new-admin","password":"new-pw-1234"}}}"#,
    )
    .unwrap();
    assert!(a
        .authenticate(Some(&basic("admin", "admin-pw")), peer(1))
        .is_err());
    assert!(a
        .authenticate(Some(&basic("new-admin", "new-pw-1234")), peer(1))
        .unwrap()
        .is_some());
    // A broken rewrite keeps the last good set, and is counted.
    std::fs::write(&file, "{ not json").unwrap();
    assert!(a
        .authenticate(Some(&basic("new-admin", "new-pw-1234")), peer(1))
        .unwrap()
        .is_some());
    assert!(a.reload_failures() >= 1);
}

#[test]
fn keys() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "too-short\n").unwrap();
    let err = load_or_generate_key(Some(&short)).unwrap_err().to_string();
    assert!(!err.contains("too-short"), "{err}");
    let good = dir.path().join("good");
    std::fs::write(&good, format!("{}\n", "k".repeat(40))).unwrap();
    assert_eq!(load_or_generate_key(Some(&good)).unwrap().len(), 40);
    assert!(load_or_generate_key(Some(&dir.path().join("missing"))).is_err());
    let a = load_or_generate_key(None).unwrap();
    let b = load_or_generate_key(None).unwrap();
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
}

#[test]
fn debug_shows_no_secret() {
    let (a, _d) = with_secret(config(), SECRET);
    let p = a
        .authenticate(Some(&basic("admin", "admin-pw")), peer(1))
        .unwrap()
        .unwrap();
    let shown = format!("{p:?}");
    assert!(shown.contains("admin") && !shown.contains("admin-pw"));
}

proptest! {
    #[test]
    fn authenticate_never_panics(header in "\\PC{0,200}", raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (a, _d) = with_secret(config(), SECRET);
        let _ = a.authenticate(Some(&header), peer(5));
        let _ = a.authenticate(Some(&format!("Basic {}", b64(&String::from_utf8_lossy(&raw)))), peer(6));
        let _ = a.authenticate(Some(&format!("Bearer {header}")), peer(7));
    }
}
