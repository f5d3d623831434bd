//! What the `cache` commands print for people: aligned tables, sizes in binary units, ages
//! in one unit ("3m", "2d"), and the repository patterns they filter by. Pure functions,
//! tested here; the commands only gather the rows.

use std::time::{Duration, SystemTime};

/// Columns of a table: a header each, and whether it is right-aligned (numbers).
pub struct Table {
    headers: Vec<(&'static str, bool)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `headers`: the column names; a name ending in `>` is right-aligned (the `>` is not
    /// printed).
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers
                .iter()
                .map(|h| match h.strip_suffix('>') {
                    Some(h) => (h, true),
                    None => (*h, false),
                })
                .collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines: two spaces between columns, the last column not padded (no
    /// trailing blanks).
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|(h, _)| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|(h, _)| (*h).to_owned()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (_, right)) in self.headers.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                if *right {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if i + 1 < n {
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 MiB`, `45.0 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A duration in its largest whole unit: `45s`, `3m`, `5h`, `2d`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// How long before `now` `then` was, as [`duration`] says it; a time in the future (a
/// clock that moved back) is `0s`.
pub fn age(then: SystemTime, now: SystemTime) -> String {
    duration(now.duration_since(then).unwrap_or_default())
}

/// RFC 3339, to the second, in UTC: what `--json` prints.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A repository pattern: `*` matches any run of characters (slashes included), `?` one;
/// anything else itself. `library/*`, `*/alpine`, `team-?/app`.
#[derive(Debug, Clone)]
pub struct Pattern(Vec<char>);

impl Pattern {
    pub fn new(p: &str) -> Pattern {
        Pattern(p.chars().collect())
    }

    /// Whether the whole of `s` matches. Linear in `s` times the pattern: the usual
    /// backtrack to the last `*` only.
    pub fn matches(&self, s: &str) -> bool {
        let p = &self.0;
        let s: Vec<char> = s.chars().collect();
        let (mut i, mut j) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while i < s.len() {
            match p.get(j) {
                Some('*') => {
                    star = Some((j, i));
                    j += 1;
                }
                Some(&c) if c == '?' || c == s[i] => {
                    i += 1;
                    j += 1;
                }
                _ => match star {
                    Some((sj, si)) => {
                        j = sj + 1;
                        i = si + 1;
                        star = Some((sj, si + 1));
                    }
                    None => return false,
                },
            }
        }
        p[j..].iter().all(|&c| c == '*')
    }
}

/// `--repo` and `--upstream`: which (upstream, repository) pairs a command is about.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub repo: Option<Pattern>,
    pub upstream: Option<String>,
}

impl Filter {
    pub fn is_set(&self) -> bool {
        self.repo.is_some() || self.upstream.is_some()
    }

    pub fn matches(&self, upstream: &str, repo: &str) -> bool {
        self.upstream.as_deref().is_none_or(|u| u == upstream)
            && self.repo.as_ref().is_none_or(|p| p.matches(repo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units_with_one_decimal() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024 + 200 * 1024), "3.2 MiB");
        assert_eq!(size(45 * 1024 * 1024 * 1024), "45.0 GiB");
        assert_eq!(size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn ages_use_their_largest_whole_unit() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |s: u64| age(now - Duration::from_secs(s), now);
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(59), "59s");
        assert_eq!(ago(60), "1m");
        assert_eq!(ago(3 * 60 + 59), "3m");
        assert_eq!(ago(3600), "1h");
        assert_eq!(ago(86_399), "23h");
        assert_eq!(ago(2 * 86_400 + 5), "2d");
        // A clock that moved back is no negative age.
        assert_eq!(age(now + Duration::from_secs(30), now), "0s");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(86_400)),
            "1970-01-02T00:00:00Z"
        );
    }

    #[test]
    fn tables_align_columns_numbers_to_the_right() {
        let mut t = Table::new(&["NAME", "SIZE>", "NOTE"]);
        t.row(vec!["a".into(), "1.0 KiB".into(), "x".into()]);
        t.row(vec!["longer".into(), "12 B".into(), String::new()]);
        assert_eq!(
            t.render(),
            "NAME       SIZE  NOTE\n\
             a       1.0 KiB  x\n\
             longer     12 B\n"
        );
    }

    #[test]
    fn patterns_match_whole_names_with_stars_and_question_marks() {
        let m = |p: &str, s: &str| Pattern::new(p).matches(s);
        assert!(m("library/*", "library/alpine"));
        assert!(m("*", "a/b/c"));
        assert!(m("*/alpine", "library/alpine"));
        assert!(!m("*/alpine", "library/alpine-x"));
        assert!(m("team-?/app", "team-a/app"));
        assert!(!m("team-?/app", "team-ab/app"));
        assert!(m("e2e/*a*b", "e2e/xaxxb"));
        assert!(!m("library/alpine", "library/alpine2"));
        assert!(m("library/alpine", "library/alpine"));
        assert!(m("", ""));
        assert!(!m("", "x"));
        let f = Filter {
            repo: Some(Pattern::new("e2e/*")),
            upstream: Some("docker.io".into()),
        };
        assert!(f.matches("docker.io", "e2e/a"));
        assert!(!f.matches("ghcr.io", "e2e/a"));
        assert!(!f.matches("docker.io", "library/a"));
        assert!(Filter::default().matches("any", "thing"));
    }
}
