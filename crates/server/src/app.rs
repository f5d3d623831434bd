//! What every request handler shares: the mirror, the authenticator, the audit log and the
//! server's own counters.

use std::sync::Arc;

use pullgate_auth::Authenticator;
use pullgate_mirror::Mirror;

use crate::audit::Audit;
use crate::metrics::Metrics;

/// Everything a request handler needs.
pub struct App {
    pub mirror: Arc<Mirror>,
    /// Who may pull: checked once, centrally, before any handler runs.
    pub auth: Authenticator,
    pub audit: Audit,
    pub(crate) metrics: Arc<Metrics>,
}

impl App {
    pub fn new(mirror: Arc<Mirror>, auth: Authenticator, audit: Audit) -> App {
        App {
            mirror,
            auth,
            audit,
            metrics: Arc::default(),
        }
    }
}
