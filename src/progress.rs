//! Showing the store's long jobs as they go: a progress bar on a terminal (indicatif),
//! plain lines elsewhere (a pipe, CI logs), log lines for the start-up repair of a server.
//! The store only counts ([`pullgate_store::Progress`]); everything about drawing is here.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pullgate_store::Progress;

use crate::table;

/// How often plain lines and log lines are written, and how long a start-up repair runs
/// before it logs any: overridable for tests and for people who want more or fewer.
pub const EVERY_ENV: &str = "PULLGATE_PROGRESS_EVERY";
const DEFAULT_EVERY: Duration = Duration::from_secs(5);

/// How far a job is, in the terms it is shown in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub files: u64,
    /// `None`: not known ahead (eviction stops when enough is freed).
    pub files_total: Option<u64>,
    pub bytes: u64,
    pub bytes_total: u64,
    /// Files and bytes hashed, for jobs that hash.
    pub hashed: Option<(u64, u64)>,
}

impl From<&Progress> for Step {
    fn from(p: &Progress) -> Step {
        Step {
            files: p.files_done,
            files_total: Some(p.files_total),
            bytes: p.bytes_done,
            bytes_total: p.bytes_total,
            hashed: Some((p.files_hashed, p.bytes_hashed)),
        }
    }
}

/// Bytes per second so far, and the time left at that rate (`None` before there is a
/// rate to go by).
pub fn rate_and_eta(s: &Step, elapsed: Duration) -> (f64, Option<Duration>) {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 || s.bytes == 0 {
        return (0.0, None);
    }
    let rate = s.bytes as f64 / secs;
    let left = s.bytes_total.saturating_sub(s.bytes) as f64 / rate;
    (rate, Duration::try_from_secs_f64(left).ok())
}

/// One plain line: `12/40 files, 1.2 GiB of 4.0 GiB (30%), 12 hashed (1.2 GiB), 250.0 MiB/s, ETA 11s`.
pub fn describe(s: &Step, elapsed: Duration) -> String {
    let files = match s.files_total {
        Some(t) => format!("{}/{t} files", s.files),
        None => format!("{} files", s.files),
    };
    let pct = if s.bytes_total == 0 {
        100
    } else {
        (s.bytes.min(s.bytes_total) as u128 * 100 / s.bytes_total as u128) as u64
    };
    let mut line = format!(
        "{files}, {} of {} ({pct}%)",
        table::size(s.bytes),
        table::size(s.bytes_total)
    );
    if let Some((n, bytes)) = s.hashed {
        line.push_str(&format!(", {n} hashed ({})", table::size(bytes)));
    }
    let (rate, eta) = rate_and_eta(s, elapsed);
    line.push_str(&format!(", {}/s", table::size(rate as u64)));
    match eta {
        Some(eta) => line.push_str(&format!(", ETA {}", table::duration(eta))),
        None => line.push_str(", ETA -"),
    }
    line
}

/// The interval from [`EVERY_ENV`] (a duration such as `5s`, `250ms`), else 5 s.
pub fn every() -> Duration {
    std::env::var(EVERY_ENV)
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .unwrap_or(DEFAULT_EVERY)
}

enum Mode {
    /// Made at the first report, when the total is known: a bar drawn before that would
    /// show 0 of 0 as complete.
    Bar(Option<ProgressBar>),
    Lines {
        last: Instant,
    },
    Log {
        last: Instant,
        logged: bool,
    },
}

/// Shows one job: `update` as often as the job reports, `finish` at its end.
pub struct Reporter {
    label: &'static str,
    mode: Mode,
    started: Instant,
    every: Duration,
    last: Option<Step>,
}

impl Reporter {
    /// For a command run by a person: a bar if stderr is a terminal, else plain lines on
    /// stderr every [`every`] and one at the end. Stdout keeps the command's report.
    pub fn for_command(label: &'static str) -> Reporter {
        let mode = if std::io::stderr().is_terminal() {
            Mode::Bar(None)
        } else {
            Mode::Lines {
                last: Instant::now(),
            }
        };
        Reporter::new(label, mode)
    }

    /// For the server's start-up repair: nothing for a quick one; an info line every
    /// [`every`] once it has run that long, and one when it ends.
    pub fn for_log(label: &'static str) -> Reporter {
        Reporter::new(
            label,
            Mode::Log {
                last: Instant::now(),
                logged: false,
            },
        )
    }

    fn new(label: &'static str, mode: Mode) -> Reporter {
        Reporter {
            label,
            mode,
            started: Instant::now(),
            every: every(),
            last: None,
        }
    }

    pub fn update(&mut self, s: Step) {
        self.last = Some(s);
        let elapsed = self.started.elapsed();
        match &mut self.mode {
            Mode::Bar(b) => {
                let b = b.get_or_insert_with(|| bar(self.label, &s));
                b.set_length(s.bytes_total);
                b.set_position(s.bytes.min(s.bytes_total));
                b.set_message(bar_message(&s));
            }
            Mode::Lines { last } => {
                if last.elapsed() >= self.every {
                    *last = Instant::now();
                    eprintln!("{}: {}", self.label, describe(&s, elapsed));
                }
            }
            Mode::Log { last, logged } => {
                if last.elapsed() >= self.every {
                    *last = Instant::now();
                    *logged = true;
                    log(self.label, &s, elapsed, "in progress");
                }
            }
        }
    }

    /// Print a line of the command's own report without tearing the bar.
    pub fn println(&self, line: &str) {
        match &self.mode {
            Mode::Bar(Some(b)) => b.suspend(|| println!("{line}")),
            _ => println!("{line}"),
        }
    }

    /// The last state, shown as the end: the full bar left on screen, or a final line.
    pub fn finish(self) {
        let elapsed = self.started.elapsed();
        match (self.mode, self.last) {
            (Mode::Bar(Some(b)), Some(s)) => {
                b.set_message(bar_message(&s));
                b.finish();
            }
            (Mode::Lines { .. }, Some(s)) => {
                eprintln!(
                    "{}: done in {}: {}",
                    self.label,
                    table::duration(elapsed),
                    describe(&s, elapsed)
                );
            }
            (Mode::Log { logged: true, .. }, Some(s)) => log(self.label, &s, elapsed, "done"),
            _ => {}
        }
    }
}

fn bar_message(s: &Step) -> String {
    let files = match s.files_total {
        Some(t) => format!("{}/{t} files", s.files),
        None => format!("{} files", s.files),
    };
    match s.hashed {
        Some((n, _)) => format!("{files}, {n} hashed"),
        None => files,
    }
}

fn bar(label: &'static str, first: &Step) -> ProgressBar {
    // Hidden until it is all set up, so the first frame drawn is a whole one.
    let b = ProgressBar::with_draw_target(Some(first.bytes_total), ProgressDrawTarget::hidden());
    // The bar takes what the terminal's width leaves, so the line never wraps. The
    // template is a constant: it parses; the fallback is only there to never panic.
    let style = ProgressStyle::with_template(
        "{prefix}: {msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    b.set_style(style);
    b.set_prefix(label);
    b.set_message(bar_message(first));
    b.set_draw_target(ProgressDrawTarget::stderr());
    b
}

fn log(label: &'static str, s: &Step, elapsed: Duration, state: &str) {
    let (rate, eta) = rate_and_eta(s, elapsed);
    tracing::info!(
        job = label,
        files_done = s.files,
        files_total = s.files_total,
        bytes_done = s.bytes,
        bytes_total = s.bytes_total,
        files_hashed = s.hashed.map(|h| h.0),
        bytes_hashed = s.hashed.map(|h| h.1),
        bytes_per_second = rate as u64,
        eta_seconds = eta.map(|e| e.as_secs()),
        elapsed_seconds = elapsed.as_secs(),
        "cache {label} {state}: {}",
        describe(s, elapsed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_line_says_files_bytes_rate_and_eta() {
        let s = Step {
            files: 12,
            files_total: Some(40),
            bytes: 300 * MIB,
            bytes_total: 1000 * MIB,
            hashed: Some((10, 250 * MIB)),
        };
        assert_eq!(
            describe(&s, Duration::from_secs(3)),
            "12/40 files, 300.0 MiB of 1000.0 MiB (30%), 10 hashed (250.0 MiB), 100.0 MiB/s, ETA 7s"
        );
        let (rate, eta) = rate_and_eta(&s, Duration::from_secs(3));
        assert_eq!(rate as u64, 100 * MIB);
        assert_eq!(eta.map(|e| e.as_secs()), Some(7));
    }

    #[test]
    fn no_rate_before_the_first_byte_and_unknown_file_totals() {
        let s = Step {
            files: 0,
            files_total: None,
            bytes: 0,
            bytes_total: 0,
            hashed: None,
        };
        assert_eq!(rate_and_eta(&s, Duration::ZERO), (0.0, None));
        assert_eq!(
            describe(&s, Duration::ZERO),
            "0 files, 0 B of 0 B (100%), 0 B/s, ETA -"
        );
    }
}
