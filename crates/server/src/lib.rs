//! The HTTP front of pullgate: accepts connections, parses each request into a [`Route`],
//! hands it to the mirror, and turns every outcome into a response — errors through
//! [`ApiError`], the only type that knows both OCI error codes and HTTP.
//!
//! What it is not: it never binds a socket, reads the environment or exits; the binary
//! passes in a bound listener and a shutdown future.
//!
//! Main items: [`serve`], [`ServerConfig`], [`App`], [`Route`], [`ApiError`], [`Body`];
//! the token realm is chosen in `realm.rs` ([`RealmUrl`] is a configured one), and
//! connections are counted per client address in `net.rs` ([`IpNet`]). A trust policy
//! denial (`MirrorError::PolicyDenied`) becomes 403 `DENIED` whose message names the rule
//! and the reason; the decision goes to the audit line as a value and to
//! `pullgate_policy_decisions_total`.

mod app;
mod audit;
mod body;
mod error;
mod exposition;
mod handlers;
mod idle;
mod metrics;
mod net;
mod realm;
mod respond;
mod route;
mod tls;
mod token;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use app::App;
pub use audit::{Audit, AuditEvent, Outcome};
pub use body::Body;
pub use error::ApiError;
pub use metrics::Metrics;
pub use net::{IpNet, IpNetError};
pub use realm::{RealmUrl, RealmUrlError};
pub use route::{Query, Route, RouteError, MAX_SCOPES, ROUTE_LABELS};
pub use tls::{Tls, TlsError, TlsFiles};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A client must send its request headers within this time (slow-header clients), and
    /// a connection must bring its first request within it too: one that connects and
    /// sends nothing is closed then, instead of holding one of `max_connections` forever.
    /// An idle HTTP/1 keep-alive connection is closed after this long as well.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes moving (HTTP/2 between
    /// requests, too) is closed after this long, and so is one whose client has read
    /// nothing of a response for this long: neither holds a `max_connections` slot, nor a
    /// blob pinned in the cache, forever.
    pub idle_timeout: Duration,
    /// Connections beyond this wait in the kernel's backlog instead of using descriptors.
    pub max_connections: usize,
    /// Connections one client (an IPv4 address, an IPv6 /64) may hold at once; more are
    /// closed as soon as they are accepted, so a few silent sockets from one place cannot
    /// take the slots of `max_connections` that everyone else waits for.
    pub max_connections_per_address: usize,
    /// Clients not counted against `max_connections_per_address`. Trusted proxies are not
    /// counted either: every client behind one arrives from its address.
    pub connection_limit_exempt: Vec<IpNet>,
    /// The realm of token challenges, instead of the one each request implies.
    pub realm: Option<RealmUrl>,
    /// Peers whose `Forwarded` / `X-Forwarded-Proto` / `X-Forwarded-Host` headers choose
    /// the realm's scheme and host. Nobody else's are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// On shutdown, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
    /// Serve HTTPS with this certificate (reloaded when its files change); plain HTTP if
    /// `None`, for loopback or behind a TLS-terminating proxy.
    pub tls: Option<Tls>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_address: 64,
            connection_limit_exempt: default_connection_limit_exempt(),
            realm: None,
            trusted_proxies: Vec::new(),
            drain_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// The node's own clients (containerd or dockerd on the node, a sidecar): loopback's own
/// addresses, not the rest of 127.0.0.0/8.
pub fn default_connection_limit_exempt() -> Vec<IpNet> {
    vec![
        IpNet::from(std::net::Ipv4Addr::LOCALHOST),
        IpNet::from(std::net::Ipv6Addr::LOCALHOST),
    ]
}

/// Serve until `shutdown` resolves, then stop accepting and let in-flight requests finish
/// for up to `drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let uncounted = config
        .connection_limit_exempt
        .iter()
        .chain(&config.trusted_proxies)
        .copied()
        .collect();
    let per_address = net::PerAddress::new(config.max_connections_per_address, uncounted);
    let realm = Arc::new(realm::RealmPolicy {
        configured: config.realm.clone(),
        trusted_proxies: config.trusted_proxies.clone(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(64 * 1024);
    builder.http2().max_header_list_size(64 * 1024);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);

    let (stop_reload, stopped) = tokio::sync::watch::channel(());
    if let Some(tls) = &config.tls {
        tokio::spawn(watch_certificate(
            tls.clone(),
            Arc::clone(&app),
            stopped.clone(),
        ));
    }

    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Closed at once: the excess costs its client a handshake, and us nothing.
        let Some(address_slot) = per_address.admit(peer.ip()) else {
            app.metrics.connection_over_address_limit();
            tracing::debug!(client = %peer, "connection closed: too many from this address");
            continue;
        };
        let Ok(local) = stream.local_addr() else {
            // Reset before we looked: nothing to serve.
            continue;
        };
        let conn = realm::Conn {
            peer,
            local,
            tls: config.tls.is_some(),
        };
        let _ = stream.set_nodelay(true);
        let activity = idle::Activity::new();
        let stream = idle::Watched::new(stream, Arc::clone(&activity));
        let app = Arc::clone(&app);
        let requests = Arc::clone(&activity);
        let realm = Arc::clone(&realm);
        let service = service_fn(move |req| {
            let app = Arc::clone(&app);
            let realm = Arc::clone(&realm);
            let in_flight = requests.request();
            async move {
                let response = handlers::handle(app, req, conn, &realm).await;
                Ok::<_, Infallible>(response.map(|body| idle::Tracked::new(body, in_flight)))
            }
        });
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let tls = config.tls.clone();
        // hyper times the headers from their first byte, and HTTP/2 between requests not
        // at all: without this, a silent or idle connection holds its slot forever.
        let limits = idle::Limits {
            first_request: config.header_read_timeout,
            idle: config.idle_timeout,
        };
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let conn = watcher.watch(conn.into_owned());
                    idle::watch(conn, &activity, limits, peer).await
                }
                Some(tls) => {
                    // The handshake, too, must end within the first request's limit.
                    let conn = async move {
                        match tls.acceptor().accept(stream).await {
                            Ok(stream) => {
                                let conn = builder.serve_connection(TokioIo::new(stream), service);
                                watcher.watch(conn.into_owned()).await
                            }
                            Err(e) => {
                                tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                                Ok(())
                            }
                        }
                    };
                    idle::watch(conn, &activity, limits, peer).await
                }
            };
            if let Some(Err(e)) = result {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
            }
            drop(address_slot);
            drop(permit);
        });
    }

    drop(listener);
    drop(stop_reload);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(config.drain_timeout) => {
            tracing::warn!("drain deadline passed; closing remaining connections");
        }
    }
    Ok(())
}

/// Look at the certificate files every [`tls::RELOAD_INTERVAL`] until the server stops.
async fn watch_certificate(tls: Tls, app: Arc<App>, mut stopped: tokio::sync::watch::Receiver<()>) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(tls::RELOAD_INTERVAL) => {}
        }
        let (tls, app) = (tls.clone(), Arc::clone(&app));
        // File reads: keep them off the async workers.
        let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed(&app.metrics)).await;
    }
}
