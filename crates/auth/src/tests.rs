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
        upstream: UpstreamId::parse(upstream).unwrap(),
        repo: RepoName::parse(repo).unwrap(),
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
    assert!(a.anonymous());
    assert!(a.authorize(None, &access("ghcr.io", "x/y")).is_ok());
    // Presenting credentials never gets a client less than presenting none would.
    let quay = a
        .authenticate(Some(&basic("quay", "quay-pw")), peer(1))
        .unwrap();
    assert!(a
        .authorize(quay.as_ref(), &access("ghcr.io", "x/y"))
        .is_ok());
    // Wrong credentials are still wrong, anonymous or not.
    assert!(matches!(
        a.authenticate(Some(&basic("quay", "nope")), peer(1)),
        Err(AuthError::Unauthorized)
    ));
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

fn throttled(r: Result<Option<Principal>, AuthError>) -> bool {
    matches!(r, Err(AuthError::Throttled { retry_after }) if retry_after > Duration::ZERO)
}

#[test]
fn wrong_credentials_are_refused_then_throttled_per_address() {
    let (a, _d) = with_secret(config(), SECRET);
    for attempt in [basic("admin", "wrong"), "Basic !!!not-base64".to_owned()] {
        assert!(matches!(
            a.authenticate(Some(&attempt), peer(9)),
            Err(AuthError::Unauthorized)
        ));
    }
    // The failure that reaches the limit, and those after it, are 429; somebody new
    // there is refused unchecked.
    assert!(throttled(
        a.authenticate(Some(&basic("nobody", "admin-pw")), peer(9))
    ));
    assert!(throttled(
        a.authenticate(Some(&basic("admin", "again")), peer(9))
    ));
    assert!(throttled(
        a.authenticate(Some(&basic("team", "team-pw")), peer(9))
    ));
    assert_eq!(a.failures(), 5);
    // Elsewhere, the right password still works.
    assert!(a
        .authenticate(Some(&basic("admin", "admin-pw")), peer(8))
        .unwrap()
        .is_some());
    assert_eq!(a.failures(), 5);
}

/// A pod pulling ten layers at once with a token that has just expired: ten 401s with a
/// challenge, none a failure, and its own re-login (and everyone's at its address) passes.
#[test]
fn expired_genuine_tokens_are_no_credentials_not_failures() {
    let cfg = AuthConfig {
        scheme: Scheme::Token,
        ..config()
    };
    let (a, _d) = with_secret(cfg.clone(), SECRET);
    let now = token::now_secs();
    let expired = token::sign(
        &cfg.signing_key,
        &token::Claims {
            iss: "pullgate".into(),
            sub: "team".into(),
            aud: "pullgate".into(),
            exp: now - 1,
            nbf: now - 300,
            iat: now - 300,
            jti: "x".into(),
            access: vec![],
        },
    )
    .unwrap();
    let bearer = format!("Bearer {expired}");
    let layers: Vec<_> = std::thread::scope(|s| {
        let pulls: Vec<_> = (0..10)
            .map(|_| s.spawn(|| a.authenticate(Some(&bearer), peer(20))))
            .collect();
        pulls.into_iter().map(|p| p.join().unwrap()).collect()
    });
    for r in layers {
        assert!(matches!(r, Ok(None)), "{r:?}");
    }
    assert_eq!(a.failures(), 0);
    assert!(a
        .authenticate(Some(&basic("team", "team-pw")), peer(20))
        .unwrap()
        .is_some());
    assert!(a
        .authenticate(Some(&basic("admin", "admin-pw")), peer(20))
        .unwrap()
        .is_some());
    // A forged token is a failure like a wrong password.
    let forged = format!("Bearer {}x", &expired[..expired.len() - 1]);
    assert!(a.authenticate(Some(&forged), peer(20)).is_err());
    assert_eq!(a.failures(), 1);
}

/// Mallory fails three times from a shared address; admin, who logs in from there,
/// still does. Somebody who has never logged in from there waits out the block: letting
/// an unknown pair through would let the guesser through.
#[test]
fn a_good_login_passes_a_block_other_users_earned() {
    let (a, _d) = with_secret(config(), SECRET);
    let shared = peer(30);
    assert!(a
        .authenticate(Some(&basic("admin", "admin-pw")), shared)
        .unwrap()
        .is_some());
    for i in 0..3 {
        let _ = a.authenticate(Some(&basic("mallory", &format!("guess-{i}"))), shared);
    }
    assert!(throttled(
        a.authenticate(Some(&basic("mallory", "guess-3")), shared)
    ));
    for _ in 0..5 {
        assert!(a
            .authenticate(Some(&basic("admin", "admin-pw")), shared)
            .unwrap()
            .is_some());
    }
    assert!(throttled(
        a.authenticate(Some(&basic("team", "team-pw")), shared)
    ));
    // Mallory's guesses at admin's name do not ride on admin's standing.
    assert!(throttled(
        a.authenticate(Some(&basic("mallory", "admin-pw")), shared)
    ));
}

/// Guesses at one user from many addresses (one each) reach the per-user limit: from then
/// on, even the right password from a new address is refused unchecked, while the user
/// itself, from where it logs in, is not.
#[test]
fn guesses_at_one_user_from_many_addresses_are_limited() {
    let cfg = AuthConfig {
        throttle: ThrottleConfig {
            max_user_failures: 5,
            ..config().throttle
        },
        ..config()
    };
    let (a, _d) = with_secret(cfg, SECRET);
    let home = peer(200);
    assert!(a
        .authenticate(Some(&basic("team", "team-pw")), home)
        .unwrap()
        .is_some());
    let mut refused = 0;
    for n in 0..30u8 {
        let from = IpAddr::from([192, 0, 2, n]);
        match a.authenticate(Some(&basic("team", &format!("guess-{n}"))), from) {
            Err(AuthError::Unauthorized) => {}
            Err(AuthError::Throttled { .. }) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(refused >= 25, "only {refused} of 30 guesses were limited");
    assert!(throttled(a.authenticate(
        Some(&basic("team", "team-pw")),
        IpAddr::from([192, 0, 2, 99])
    )));
    assert!(a
        .authenticate(Some(&basic("team", "team-pw")), home)
        .unwrap()
        .is_some());
    // Other users are untouched.
    assert!(a
        .authenticate(
            Some(&basic("admin", "admin-pw")),
            IpAddr::from([192, 0, 2, 98])
        )
        .unwrap()
        .is_some());
}

/// Guesses spread over many addresses and names, none near its own limit, reach the
/// global ceiling; known pairs still log in.
#[test]
fn the_global_ceiling_limits_guesses_spread_everywhere() {
    let cfg = AuthConfig {
        throttle: ThrottleConfig {
            max_global_failures: 20,
            ..config().throttle
        },
        ..config()
    };
    let (a, _d) = with_secret(cfg, SECRET);
    let home = peer(200);
    assert!(a
        .authenticate(Some(&basic("admin", "admin-pw")), home)
        .unwrap()
        .is_some());
    for n in 0..19u8 {
        let r = a.authenticate(
            Some(&basic(&format!("user-{n}"), "guess")),
            IpAddr::from([198, 51, 100, n]),
        );
        assert!(matches!(r, Err(AuthError::Unauthorized)), "{n}: {r:?}");
    }
    assert!(throttled(a.authenticate(
        Some(&basic("user-19", "guess")),
        IpAddr::from([198, 51, 100, 19])
    )));
    assert!(throttled(a.authenticate(
        Some(&basic("team", "team-pw")),
        IpAddr::from([198, 51, 100, 50])
    )));
    assert!(a
        .authenticate(Some(&basic("admin", "admin-pw")), home)
        .unwrap()
        .is_some());
}

/// The user name of a failed login is logged only when it names an entry: a name that
/// names none may be a password typed into the wrong field.
#[test]
fn unknown_user_names_are_never_logged() {
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let (a, _d) = with_secret(config(), SECRET);
    tracing::subscriber::with_default(subscriber, || {
        let _ = a.authenticate(Some(&basic("Tr0ub4dor&3-typed-here", "")), peer(40));
        let _ = a.authenticate(Some(&basic("admin", "wrong-password-9")), peer(40));
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(!log.contains("Tr0ub4dor"), "{log}");
    assert!(!log.contains("wrong-password-9"), "{log}");
    // A known name with a wrong password is worth a line, and says who.
    assert!(log.contains("\"admin\""), "{log}");
}

#[test]
fn unpadded_basic_and_scheme_case_are_accepted() {
    let (a, _d) = with_secret(config(), SECRET);
    // "admin:admin-pw" is 14 bytes, so its padded base64 ends in "=".
    let padded = b64("admin:admin-pw");
    assert!(padded.ends_with('='));
    let unpadded = padded.trim_end_matches('=');
    for header in [
        format!("Basic {unpadded}"),
        format!("basic  {}", b64("admin:admin-pw")),
    ] {
        assert_eq!(
            a.authenticate(Some(&header), peer(1))
                .unwrap()
                .map(|p| p.user),
            Some("admin".to_owned()),
            "{header}"
        );
    }
    assert!(matches!(
        a.authenticate(Some("Digest foo"), peer(1)),
        Err(AuthError::Unauthorized)
    ));
}

#[test]
fn rules_with_double_star_and_wildcard_keys() {
    let cfg = AuthConfig {
        mirror_hosts: vec!["mirror.example.com:5000".into()],
        upstreams: vec![
            "docker.io".into(),
            "ghcr.io".into(),
            "registry.corp.example".into(),
        ],
        rules: vec![
            Rule {
                user: "dev".into(),
                patterns: vec!["ghcr.io/team-a/**".into(), "docker.io/library/*".into()],
            },
            // A second rule for the same user adds patterns.
            Rule {
                user: "dev".into(),
                patterns: vec!["registry.corp.example/base".into()],
            },
        ],
        ..config()
    };
    let secret = r#"{"auths":{
        "mirror.example.com:5000": {"username": "dev", "password": "dev-pw"},
        "*.corp.example": {"username": "corp", "password": "corp-pw"}
    }}"#;
    let (a, _d) = with_secret(cfg, secret);
    let dev = a
        .authenticate(Some(&basic("dev", "dev-pw")), peer(1))
        .unwrap()
        .unwrap();
    for ok in [
        access("ghcr.io", "team-a"),
        access("ghcr.io", "team-a/app"),
        access("ghcr.io", "team-a/x/y/app"),
        access("docker.io", "library/alpine"),
        access("registry.corp.example", "base"),
    ] {
        assert!(a.authorize(Some(&dev), &ok).is_ok(), "{ok:?}");
    }
    for denied in [
        access("ghcr.io", "team-ab/app"),
        access("ghcr.io", "team-b/app"),
        access("docker.io", "library/x/y"),
        access("docker.io", "bitnami/redis"),
        access("registry.corp.example", "base/sub"),
    ] {
        assert!(
            matches!(a.authorize(Some(&dev), &denied), Err(AuthError::Denied)),
            "{denied:?}"
        );
    }
    // `*.corp.example` names the upstream registry.corp.example, one label deep, and no
    // rule narrows user corp.
    let corp = a
        .authenticate(Some(&basic("corp", "corp-pw")), peer(1))
        .unwrap()
        .unwrap();
    assert!(a
        .authorize(Some(&corp), &access("registry.corp.example", "any/thing"))
        .is_ok());
    assert!(matches!(
        a.authorize(Some(&corp), &access("ghcr.io", "any/thing")),
        Err(AuthError::Denied)
    ));
}

#[test]
fn the_union_of_every_matching_entry_across_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.json");
    let two = dir.path().join("two.json");
    std::fs::write(
        &one,
        r#"{"auths":{"ghcr.io/team-a":{"username":"u","password":"pw"}}}"#,
    )
    .unwrap();
    std::fs::write(
        &two,
        r#"{"auths":{"docker.io":{"username":"u","password":"pw"},"ghcr.io/team-b":{"username":"u","password":"other"}}}"#,
    )
    .unwrap();
    let sources = [&one, &two]
        .iter()
        .map(|p| SecretSource::open(p).unwrap())
        .collect();
    let a = Authenticator::new(config(), sources);
    let u = a
        .authenticate(Some(&basic("u", "pw")), peer(1))
        .unwrap()
        .unwrap();
    assert!(a
        .authorize(Some(&u), &access("ghcr.io", "team-a/x"))
        .is_ok());
    assert!(a.authorize(Some(&u), &access("docker.io", "x/y")).is_ok());
    // Same user, other password: that entry's grant is not this principal's.
    assert!(matches!(
        a.authorize(Some(&u), &access("ghcr.io", "team-b/x")),
        Err(AuthError::Denied)
    ));
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
    let issued = a
        .issue_token(
            &team,
            &[
                access("ghcr.io", "team-a/app"),
                access("ghcr.io", "team-b/app"),
            ],
        )
        .unwrap();
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
    // Expired: no credentials (a 401 with a challenge), not a principal.
    assert!(matches!(
        a.authenticate(Some(&format!("Bearer {expired}")), peer(3)),
        Ok(None)
    ));
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

    let key = b"0123456789abcdef0123456789abcdef".to_vec();
    let shown = format!(
        "{:?}",
        AuthConfig {
            signing_key: key,
            ..config()
        }
    );
    assert!(shown.contains("<32 bytes>"), "{shown}");
    assert!(
        !shown.contains("0123456789") && !shown.contains("48, 49"),
        "{shown}"
    );
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

/// A token that cannot be signed is an error for the caller to answer, never an empty token.
#[test]
fn a_signing_failure_is_an_error_not_an_empty_token() {
    let (a, _d) = with_secret(
        AuthConfig {
            scheme: Scheme::Token,
            signing_key: vec![1u8; 8],
            ..config()
        },
        SECRET,
    );
    let p = a
        .authenticate(Some(&basic("admin", "admin-pw")), peer(1))
        .unwrap()
        .unwrap();
    match a.issue_token(&p, &[access("docker.io", "library/alpine")]) {
        Err(AuthError::Signing(_)) => {}
        Err(e) => panic!("{e}"),
        Ok(t) => panic!("issued {:?} bytes of token", t.token.len()),
    }
}
