//! File descriptors: every connection costs one, and running out makes `accept`, cache
//! files and upstream sockets fail alike. The soft limit is raised to the hard one at
//! start-up, and `max_connections` is kept below it with room for everything else.

/// Descriptors kept for the cache (blob files being read or written, the index), upstream
/// connections, the audit log, and the runtime itself.
pub const RESERVED: u64 = 512;

/// Raise the open-file limit as far as allowed, and return how many connections to serve
/// at once: `wanted`, or fewer if the limit cannot hold them plus [`RESERVED`].
pub fn connection_budget(wanted: usize) -> usize {
    let limit = raise_limit();
    let budget = match limit {
        Some(limit) => budget_for(wanted, limit),
        None => wanted,
    };
    if budget < wanted {
        tracing::warn!(
            max_connections = wanted,
            open_file_limit = limit,
            serving = budget,
            "the open-file limit cannot hold server.max_connections; serving fewer connections at once"
        );
    } else {
        tracing::info!(
            max_connections = budget,
            open_file_limit = limit,
            "connection limit"
        );
    }
    budget
}

fn budget_for(wanted: usize, limit: u64) -> usize {
    let room = usize::try_from(limit.saturating_sub(RESERVED)).unwrap_or(usize::MAX);
    wanted.min(room).max(1)
}

/// Set the soft `RLIMIT_NOFILE` to the hard limit; the soft limit now in force, if known.
#[cfg(unix)]
fn raise_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed, which lives here.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return Some(u64::MAX);
    }
    // `rlim_t` is u64 on 64-bit Linux, narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    Some(u64::from(lim.rlim_cur))
}

#[cfg(not(unix))]
fn raise_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_room_for_the_cache_and_upstreams() {
        assert_eq!(budget_for(4096, 1_048_576), 4096);
        assert_eq!(budget_for(4096, 1024), 512);
        assert_eq!(budget_for(4096, 100), 1);
        assert_eq!(budget_for(10, u64::MAX), 10);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let now = raise_limit().expect("getrlimit works here");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        assert!(now == lim.rlim_cur || lim.rlim_cur == libc::RLIM_INFINITY);
    }
}
