//! `pullgate`: the binary. Parses the command line and the configuration, wires the
//! crates together, and owns the process: signals, logging, exit codes.

mod cache;
mod check;
mod config;
mod fds;
mod policy;
mod progress;
mod table;
mod units;
mod warm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pullgate_auth::{load_or_generate_key, AuthConfig, Authenticator};
use pullgate_credentials::SecretSource;
use pullgate_mirror::{Mirror, MirrorConfig};
use pullgate_server::{App, Audit, ServerConfig, Tls};
use pullgate_store::{Store, StoreOptions};
use pullgate_upstream::{Upstream, UpstreamConfig};

use crate::config::{FileConfig, Overrides, Settings};

#[derive(Parser)]
#[command(
    name = "pullgate",
    version,
    about = "An authenticating pull-through registry mirror"
)]
struct Cli {
    /// Log lines as human-readable text or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror.
    Serve(ConfigArgs),
    /// Validate a configuration and print the effective settings (secret paths, never
    /// secret values). Exits non-zero if the configuration is invalid.
    CheckConfig(CheckArgs),
    /// Inspect and maintain the cache, with the server stopped (a running server holds the
    /// cache's lock, and these commands then fail saying so).
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Pull images through a running mirror as a client would (manifests, the selected
    /// platforms, configs and layers, every blob verified), so they are cached before a
    /// rollout needs them. Exits non-zero naming each image that failed.
    Warm(warm::WarmArgs),
    /// The trust policy: explain its decision on an image.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

#[derive(clap::Args)]
pub(crate) struct ConfigArgs {
    /// TOML configuration file, laid over the embedded config/pullgate.toml: it needs only
    /// what it changes (default: the embedded file alone).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:5000 (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Cache directory (overrides cache.dir).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// URL of the default upstream registry; http:// is allowed for local registries
    /// (overrides the first [[upstream]]'s url: the embedded default's docker.io, keeping
    /// its name, when the file has no [[upstream]]).
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
}

#[derive(clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Also print which [[cache.tag_rule]] decides this image's tags, and the TTL it gets
    /// (as a user names it to the mirror: alpine:3.20, ghcr.io/org/app:v1). Repeatable.
    #[arg(long = "tag", value_name = "IMAGE")]
    tags: Vec<String>,
}

impl ConfigArgs {
    fn settings(self) -> Result<Settings> {
        FileConfig::load(self.config.as_deref())?.into_settings(Overrides {
            listen: self.listen,
            cache_dir: self.cache_dir,
            upstream: self.upstream,
        })
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match cli.command {
        Command::Serve(args) => {
            let settings = args.settings()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(serve(settings))
        }
        Command::CheckConfig(CheckArgs { config: args, tags }) => {
            let source = args.config.as_ref().map_or_else(
                || "the embedded default".to_owned(),
                |p| format!("{} over the embedded default", p.display()),
            );
            let settings = args.settings()?;
            for line in check::files(&settings) {
                eprintln!("{line}");
            }
            println!("# pullgate check-config: {source} is valid; effective settings:");
            let report = check::tag_policy_report(&settings, &tags)?;
            print!("{}", check::render(&settings));
            print!("{report}");
            Ok(())
        }
        Command::Warm(args) => warm::run(args),
        Command::Policy(policy::PolicyCommand::Check { config, image }) => {
            let code = policy::run(config.settings()?, &image);
            std::process::exit(code)
        }
        Command::Cache(command) => cache::run(command, |args| {
            FileConfig::load(args.config.as_deref())?.into_settings(Overrides {
                cache_dir: args.cache_dir.clone(),
                ..Overrides::default()
            })
        }),
    }
}

async fn serve(s: Settings) -> Result<()> {
    // Repairs what a crash left before anything is served; see pullgate_store::Repair. A
    // long one (many files the index does not know, to hash) logs how far it is.
    // The bucket first: a wrong endpoint, CA or credentials fail the start, and a crash's
    // unfinished uploads are swept before anything is served.
    let bucket = match &s.storage {
        None => None,
        Some(st) => Some(pullgate_store::BucketOptions {
            s3: pullgate_store::S3::open(&st.config)
                .await
                .context("opening the [storage.s3] bucket")?,
            max_uploads: st.max_uploads,
        }),
    };
    let mut repair = progress::Reporter::for_log("start-up repair");
    let store = Store::open_reporting(
        &s.cache_dir,
        StoreOptions {
            limits: s.cache_limits,
            inspect_only: false,
            bucket,
        },
        &mut |p| repair.update(p.into()),
    )
    .with_context(|| format!("opening the cache at {}", s.cache_dir.display()))?;
    repair.finish();
    // Stops the evictor and the prefetch loops at shutdown.
    let evictor_stop = tokio_util::sync::CancellationToken::new();
    let upstreams = upstreams(&s)?;
    let auth = authenticator(&s)?;
    let audit = match (&s.audit.enabled, &s.audit.path) {
        (false, _) => Audit::disabled(),
        (true, None) => Audit::new(Box::new(std::io::stdout())),
        (true, Some(path)) => Audit::new(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the audit log {}", path.display()))?,
        )),
    };
    let mirror = Mirror::new(
        upstreams,
        store.clone(),
        MirrorConfig {
            tags: s.tag_policy.clone(),
            max_fills_per_client: s.max_fills_per_client,
            negative_ttl: s.negative_ttl,
        },
    );
    // Every [[prefetch]] image routes to a configured upstream, or pullgate does not start.
    for rule in &s.prefetch {
        for image in &rule.images {
            mirror
                .prefetch_target(image)
                .with_context(|| format!("[[prefetch]] {}", image.written))?;
        }
    }
    // Every key and CA must load now, as client secrets must: a policy naming a key it
    // cannot read would deny everything (or tempt someone to loosen it).
    let mirror = if s.trust.is_active() {
        let keys = pullgate_trust::KeySet::open(&s.trust.config.key, &s.trust.config.ca)
            .context("[trust] keys and CAs")?;
        let k = keys.current();
        tracing::info!(
            rules = s.trust.policy.rules().len(),
            keys = k.key_summary().count(),
            cas = k.ca_summary().count(),
            unmatched = ?s.trust.policy.unmatched(),
            "trust policy enforced on every manifest served"
        );
        mirror.with_trust(s.trust.policy.clone(), keys)
    } else {
        mirror
    };
    let tls = s
        .tls
        .clone()
        .map(Tls::load)
        .transpose()
        .context("[server.tls]")?;
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .with_context(|| format!("listening on {}", s.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        tls = tls.is_some(),
        cache = %s.cache_dir.display(),
        cache_max_size = s.cache_limits.map(|l| l.max_bytes()),
        storage = ?store.bucket(),
        upstreams = ?s.upstreams.iter().map(|u| format!("{}={}", u.name, u.url)).collect::<Vec<_>>(),
        "pullgate serving"
    );
    // Eviction manages the blob files of the cache directory; a bucket is not bounded yet.
    if store.bucket().is_none() {
        mirror.tasks().spawn(store.evictor(evictor_stop.clone()));
    }
    warn_about_the_realm(&s, tls.is_some());
    if let Some(c) = &s.cluster {
        // Accepted so that a deployment can be written and checked ahead of the proxying
        // step, but said out loud: nothing routes by owner yet.
        tracing::warn!(
            me = %c.me,
            members = ?c.members,
            "[cluster] is validated but not used yet: every replica still fills for itself \
             (the internal port is not opened)"
        );
    }
    let mirror = Arc::new(mirror);
    // [[prefetch]]: a task per rule, owned by the mirror's tracker, stopped before its drain.
    for rule in s.prefetch.iter().cloned() {
        mirror
            .tasks()
            .spawn(Arc::clone(&mirror).prefetch_loop(rule, evictor_stop.clone()));
    }
    let app = Arc::new(App::new(Arc::clone(&mirror), auth, audit));
    let config = ServerConfig {
        header_read_timeout: s.header_read_timeout,
        idle_timeout: s.idle_timeout,
        max_connections: fds::connection_budget(s.max_connections),
        max_connections_per_address: s.max_connections_per_address,
        connection_limit_exempt: s.connection_limit_exempt.clone(),
        realm: s.auth.realm.clone(),
        trusted_proxies: s.trusted_proxies.clone(),
        drain_timeout: s.drain_timeout,
        tls,
    };
    let drain = s.drain_timeout;
    pullgate_server::serve(listener, Arc::clone(&app), config, shutdown_signal()).await?;
    // Connections are closed; fills and manifest fetches that outlived their clients get
    // the same deadline to commit, and the evictor finishes its run. One cut short leaves
    // only a tmp file, emptied at the next start.
    evictor_stop.cancel();
    let unfinished = mirror.shutdown(tokio::time::Instant::now() + drain).await;
    if unfinished > 0 {
        tracing::warn!(
            tasks = unfinished,
            "drain deadline passed with fills unfinished; their partial files are discarded"
        );
    }
    // The audit lines of every request answered are written before the process ends.
    let audit_deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let audit_app = Arc::clone(&app);
    let flushed = tokio::task::spawn_blocking(move || audit_app.audit.shutdown(audit_deadline))
        .await
        .unwrap_or(false);
    if !flushed {
        tracing::warn!("the audit writer did not finish in time; its last lines may be lost");
    }
    // Blob files are fsynced as they commit; the index's last writes are flushed here.
    store.flush().context("flushing the cache index")?;
    tracing::info!("pullgate stopped");
    Ok(())
}

/// The configured upstreams, with the mirror's own credentials (`serve`, `policy check`).
fn upstreams(s: &Settings) -> Result<Vec<Upstream>> {
    s.upstreams
        .iter()
        .map(|u| {
            let credentials = u
                .credentials
                .as_deref()
                .map(SecretSource::open)
                .transpose()
                .with_context(|| format!("upstream {}: reading its credentials secret", u.name))?;
            Upstream::new(UpstreamConfig {
                name: u.name.clone(),
                url: u.url.clone(),
                credentials,
                connect_timeout: u.connect_timeout,
                read_timeout: u.read_timeout,
                user_agent: format!("pullgate/{}", env!("CARGO_PKG_VERSION")),
                token_realms: u.token_realms.clone(),
                allow_private_redirects: u.allow_private_redirects,
                max_blob_size: s.max_blob_size,
                max_concurrent_requests: u.max_concurrent_requests,
                max_bandwidth: u.max_bandwidth,
                ratelimit_warn_below: u.ratelimit_warn_below,
            })
            .with_context(|| format!("upstream {}", u.name))
        })
        .collect::<Result<Vec<_>>>()
}

/// Where the token flow would send passwords in clear text, say so once at start.
fn warn_about_the_realm(s: &Settings, tls: bool) {
    if s.auth.scheme != pullgate_auth::Scheme::Token {
        return;
    }
    match &s.auth.realm {
        Some(realm) if realm.is_plain_http() => tracing::warn!(
            realm = realm.as_str(),
            "[auth] realm is plain http: clients send their passwords to it in clear text"
        ),
        None if !tls && s.trusted_proxies.is_empty() && !s.listen.ip().is_loopback() => {
            tracing::warn!(
                "the token realm is plain http (no [server.tls], no [auth] realm, no \
                 server.trusted_proxies): clients send their passwords in clear text"
            )
        }
        _ => {}
    }
}

/// Client authentication from the mounted secrets. Every secret must load now: a mirror
/// that starts without the credentials it was given would refuse everyone, or worse.
fn authenticator(s: &Settings) -> Result<Authenticator> {
    let a = &s.auth;
    let secrets = a
        .client_secrets
        .iter()
        .map(|p| {
            SecretSource::open(p).with_context(|| format!("[auth] client secret {}", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let signing_key =
        load_or_generate_key(a.signing_key.as_deref()).context("[auth] signing_key")?;
    if a.anonymous {
        tracing::warn!("anonymous pulls are allowed ([auth] anonymous)");
    }
    Ok(Authenticator::new(
        AuthConfig {
            scheme: a.scheme,
            anonymous: a.anonymous,
            mirror_hosts: a.mirror_hosts.clone(),
            upstreams: s.upstreams.iter().map(|u| u.name.to_string()).collect(),
            rules: a.rules.clone(),
            service: a.service.clone(),
            token_ttl: a.token_ttl,
            signing_key,
            throttle: a.throttle.clone(),
        },
        secrets,
    ))
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
}
