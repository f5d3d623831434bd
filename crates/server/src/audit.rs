//! The audit log: one JSON line per manifest pull and per refused request, written by its
//! own thread so a slow disk never stalls a request. The queue is bounded; lines that do
//! not fit are counted, never buffered without end. [`Audit::shutdown`] writes what is
//! queued and waits for the thread, so a stopping mirror loses no line it accepted.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

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
    /// [`Outcome::as_str`]: hit, miss, stale, upstream, ok, unauthorized, denied,
    /// throttled, error.
    pub outcome: &'a str,
    pub status: u16,
    pub bytes: u64,
    /// The trust policy's decision, when one was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyAudit<'a>>,
}

/// The trust policy's part of an audit line: the rule, the outcome and reason, the keys
/// that verified (names and fingerprints), a scan summary. Never key material.
#[derive(Debug, Serialize)]
pub struct PolicyAudit<'a> {
    pub rule: &'a str,
    pub outcome: &'a str,
    pub reason: &'a str,
    pub keys: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan: Option<&'a str>,
}

impl<'a> From<&'a pullgate_mirror::PolicyDecision> for PolicyAudit<'a> {
    fn from(d: &'a pullgate_mirror::PolicyDecision) -> Self {
        PolicyAudit {
            rule: &d.rule,
            outcome: d.outcome.as_str(),
            reason: &d.reason,
            keys: &d.keys,
            scan: d.scan.as_deref(),
        }
    }
}

/// What became of a request, as the code that decided it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the cache.
    Hit,
    /// Fetched from the upstream.
    Miss,
    /// A cached tag served because the upstream could not be asked.
    Stale,
    /// Passed through from the upstream (tags lists, referrers).
    Upstream,
    /// Answered by the mirror itself (`/v2/`, a token).
    Ok,
    /// No credentials, or ones that did not check out: 401 with a challenge.
    Unauthorized,
    /// Authenticated, but not allowed this repository, or refused by the trust policy.
    Denied,
    /// Refused by the failed-login throttle.
    Throttled,
    /// Failed for any other reason (the error says which).
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Upstream => "upstream",
            Outcome::Ok => "ok",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Denied => "denied",
            Outcome::Throttled => "throttled",
            Outcome::Error => "error",
        }
    }

    /// Refusals are audited for every route, not only manifest pulls.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Outcome::Unauthorized | Outcome::Denied | Outcome::Throttled
        )
    }

    /// Where the content came from, for the access log.
    pub fn source(self) -> Option<&'static str> {
        match self {
            Outcome::Hit | Outcome::Miss | Outcome::Stale | Outcome::Upstream => {
                Some(self.as_str())
            }
            _ => None,
        }
    }
}

impl From<pullgate_mirror::Source> for Outcome {
    fn from(s: pullgate_mirror::Source) -> Self {
        match s {
            pullgate_mirror::Source::Hit => Outcome::Hit,
            pullgate_mirror::Source::Miss => Outcome::Miss,
            pullgate_mirror::Source::Stale => Outcome::Stale,
        }
    }
}

pub struct Audit {
    /// `None` asks the writer to finish.
    tx: Option<mpsc::SyncSender<Option<String>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dropped: AtomicU64,
}

impl Audit {
    /// Audit lines go to `out` (stdout in the binary), one JSON object a line.
    pub fn new(out: Box<dyn Write + Send>) -> Audit {
        let (tx, rx) = mpsc::sync_channel::<Option<String>>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("pullgate-audit".into())
            .spawn(move || {
                let mut out = std::io::LineWriter::new(out);
                for line in rx.iter().map_while(|m| m) {
                    if out.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                }
                let _ = out.flush();
            });
        match spawned {
            Ok(handle) => Audit {
                tx: Some(tx),
                thread: Mutex::new(Some(handle)),
                dropped: AtomicU64::new(0),
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the audit writer; audit lines are dropped");
                Audit::disabled()
            }
        }
    }

    /// Write every line queued so far and stop the writer, waiting for it until
    /// `deadline`. Blocking. Lines recorded afterwards are dropped (and counted). Returns
    /// whether the writer finished in time.
    pub fn shutdown(&self, deadline: Instant) -> bool {
        let Some(tx) = &self.tx else { return true };
        loop {
            match tx.try_send(None) {
                Ok(()) | Err(mpsc::TrySendError::Disconnected(_)) => break,
                Err(mpsc::TrySendError::Full(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(mpsc::TrySendError::Full(_)) => return false,
            }
        }
        let Some(handle) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return true;
        };
        while !handle.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        handle.join().is_ok()
    }

    /// No audit log (tests, or audit switched off).
    pub fn disabled() -> Audit {
        Audit {
            tx: None,
            thread: Mutex::new(None),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn record(&self, event: &AuditEvent<'_>) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut line) = serde_json::to_string(event) else {
            return;
        };
        line.push('\n');
        if tx.try_send(Some(line)).is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            // Slow, so lines are still queued when shutdown is asked for.
            std::thread::sleep(Duration::from_millis(2));
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn shutdown_writes_every_queued_line_and_then_drops_later_ones() {
        let out = Shared::default();
        let audit = Audit::new(Box::new(out.clone()));
        let event = AuditEvent {
            time: now_rfc3339(),
            user: Some("u"),
            client: "127.0.0.1".into(),
            method: "GET",
            upstream: None,
            repository: None,
            reference: None,
            digest: None,
            outcome: "hit",
            status: 200,
            bytes: 0,
            policy: None,
        };
        for _ in 0..100 {
            audit.record(&event);
        }
        assert!(audit.shutdown(Instant::now() + Duration::from_secs(10)));
        let lines = out
            .0
            .lock()
            .unwrap()
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        assert_eq!(lines, 100);
        audit.record(&event);
        assert_eq!(audit.dropped(), 1);
        assert!(audit.shutdown(Instant::now()));
    }
}
