//! Progress of the long maintenance jobs (start-up repair, `cache gc`'s repair, `cache
//! rebuild`), as plain numbers for a callback. The store only counts; how progress is shown
//! (a terminal bar, plain lines, log lines, nothing) is the caller's choice.

/// Which job a [`Progress`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Files checked against the index; only those it does not know are hashed.
    Repair,
    /// Every file re-hashed.
    Rebuild,
}

impl Job {
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Repair => "repair",
            Job::Rebuild => "rebuild",
        }
    }
}

/// Where a job is. `*_total` are what was under `blobs/` when the job began (files removed
/// or added meanwhile can make `*_done` end a little off them); `bytes_done` counts a file's
/// bytes as they are hashed, or all at once when it needs no hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub job: Job,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Of those done, the files hashed and their bytes (the slow part).
    pub files_hashed: u64,
    pub bytes_hashed: u64,
}

/// Bytes hashed between two reports within one file: a large blob shows progress as it
/// is read, not only when it is done.
pub(crate) const REPORT_EVERY_BYTES: u64 = 16 * 1024 * 1024;

/// The callback the jobs report to: called after each file, and every
/// [`REPORT_EVERY_BYTES`] within a large one. It should be cheap (throttle any drawing);
/// it runs on the job's thread.
pub type OnProgress<'a> = &'a mut dyn FnMut(&Progress);
