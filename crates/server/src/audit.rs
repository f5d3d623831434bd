//! The audit log: one JSON line per manifest pull and per refused request, written by its
//! own thread so a slow disk never stalls a request. The queue is bounded; lines that do
//! not fit are counted, never buffered without end.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::SystemTime;

use serde::Serialize;

/// Lines waiting for the writer thread.
const QUEUE: usize = 4096;

/// One audited event. Never holds a secret: `user` is the name only.
#[derive(Debug, Serialize)]
pub struct AuditEvent<'a> {
    pub time: String,
    pub user: Option<&'a str>,
    pub client: String,
    pub method: &'a str,
    pub upstream: Option<&'a str>,
    pub repository: Option<&'a str>,
    pub reference: Option<&'a str>,
    pub digest: Option<String>,
    /// hit, miss, stale, denied, unauthorized, throttled, error
    pub outcome: &'a str,
    pub status: u16,
    pub bytes: u64,
}

pub struct Audit {
    tx: Option<mpsc::SyncSender<String>>,
    dropped: AtomicU64,
}

impl Audit {
    /// Audit lines go to `out` (stdout in the binary), one JSON object a line.
    pub fn new(out: Box<dyn Write + Send>) -> Audit {
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("pullgate-audit".into())
            .spawn(move || {
                let mut out = std::io::LineWriter::new(out);
                for line in rx {
                    if out.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = &spawned {
            tracing::error!(error = %e, "cannot start the audit writer; audit lines are dropped");
        }
        Audit {
            tx: spawned.ok().map(|_| tx),
            dropped: AtomicU64::new(0),
        }
    }

    /// No audit log (tests, or audit switched off).
    pub fn disabled() -> Audit {
        Audit {
            tx: None,
            dropped: AtomicU64::new(0),
        }
    }

    pub fn record(&self, event: &AuditEvent<'_>) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut line) = serde_json::to_string(event) else {
            return;
        };
        line.push('\n');
        if tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines lost because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
