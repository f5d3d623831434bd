//! Durations and sizes as the configuration writes them, read once into their types where
//! the file is deserialized: a struct field is a `Duration` or a [`ByteSize`], never a
//! string parsed again later.
//!
//! Durations use humantime (already a dependency, and the syntax `"30s"`, `"5m"`,
//! `"1h 30m"` the files have always had) through the small [`duration`] module rather than
//! the `humantime-serde` crate, which would add a dependency for the same dozen lines. Sizes
//! keep pullgate's own exact parser rather than `bytesize` (it reads the number as an `f64`,
//! accepts `0`, and prints rounded values such as `1.5 GiB`, which would not read back to the
//! same byte count in `check-config`) or `byte-unit` (more than this needs, with its own
//! meaning for a bare `k`).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A size in bytes, above zero: `"50GiB"`, `"1.5 GiB"`, `"500MB"`, `"4096"`, or a bare
/// integer of bytes. Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones
/// (KB, MB, GB, TB, and K, M, G, T) powers of 1000, `B` or no unit bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeError {
    Unit(String),
    Number,
    Zero,
}

// By hand rather than with thiserror, which the binary does not otherwise depend on.
impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::Unit(u) => write!(
                f,
                "unknown unit {u:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ),
            SizeError::Number => f.write_str("not a number of bytes"),
            SizeError::Zero => f.write_str("the size must be above zero"),
        }
    }
}

impl std::error::Error for SizeError {}

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn new(bytes: u64) -> Result<Self, SizeError> {
        if bytes == 0 {
            return Err(SizeError::Zero);
        }
        Ok(ByteSize(bytes))
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, SizeError> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "m" | "mb" => 1000_u64.pow(2),
            "g" | "gb" => 1000_u64.pow(3),
            "t" | "tb" => 1000_u64.pow(4),
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            other => return Err(SizeError::Unit(other.to_owned())),
        };
        let bytes = match number.split_once('.') {
            None => number.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)),
            Some((whole, frac)) if !frac.is_empty() && frac.len() <= 9 => {
                let whole: u64 = if whole.is_empty() {
                    0
                } else {
                    whole.parse().map_err(|_| SizeError::Number)?
                };
                let scale = 10_u64.pow(frac.len() as u32);
                let frac: u64 = frac.parse().map_err(|_| SizeError::Number)?;
                whole.checked_mul(unit).and_then(|w| {
                    // unit * frac fits: unit <= 2^40 and frac < 10^9 < 2^30.
                    w.checked_add(unit * frac / scale)
                })
            }
            Some(_) => None,
        };
        ByteSize::new(bytes.ok_or(SizeError::Number)?)
    }
}

/// The exact size in the largest binary unit that divides it, so that it reads back to
/// the same byte count: `50GiB`, `1536B`.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"50GiB\" or \"500MB\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
                text.parse().map_err(|e| {
                    E::custom(format!(
                        "{text:?} is not a size such as \"50GiB\" or \"500MB\": {e}"
                    ))
                })
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .ok()
                    .and_then(|n| ByteSize::new(n).ok())
                    .ok_or_else(|| E::custom(format!("{n} is not a size above zero")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
                ByteSize::new(n).map_err(|_| E::custom(format!("{n} is not a size above zero")))
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

/// `#[serde(with = "units::duration")]` on a `Duration` field: `"30s"`, `"5m"`, `"1h 30m"`.
/// An error quotes the value; the TOML layer adds the key (`in `cache.tag_ttl``).
pub mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    const EXPECTED: &str = "a duration such as \"30s\", \"5m\" or \"1h 30m\"";

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTED)
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            humantime::parse_duration(text)
                .map_err(|e| E::custom(format!("{text:?} is not {EXPECTED}: {e}")))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_str(DurationVisitor)
    }

    /// The same for an `Option<Duration>` field (with `#[serde(default)]`).
    pub mod option {
        use std::time::Duration;

        use serde::de::Deserializer;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

/// A tag rule's `ttl`: `"never"` (pinned), or a duration as [`duration`] reads it.
pub mod tag_ttl {
    use std::fmt;

    use pullgate_mirror::TagTtl;
    use serde::de::{self, Deserializer, Visitor};

    /// How a pinned tag is written, in the file and by `check-config`.
    pub const NEVER: &str = "never";

    struct TtlVisitor;

    impl Visitor<'_> for TtlVisitor {
        type Value = TagTtl;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("\"never\" or a duration such as \"30s\", \"5m\" or \"1h 30m\"")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<TagTtl, E> {
            if text == NEVER {
                return Ok(TagTtl::Never);
            }
            humantime::parse_duration(text)
                .map(TagTtl::After)
                .map_err(|e| {
                    E::custom(format!(
                        "{text:?} is neither \"never\" nor a duration such as \"30s\": {e}"
                    ))
                })
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TagTtl, D::Error> {
        d.deserialize_str(TtlVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn sizes_parse_exactly_and_print_back() {
        let gib = 1 << 30;
        for (text, want) in [
            ("50GiB", 50 * gib),
            ("50 GiB", 50 * gib),
            ("1.5GiB", 3 * gib / 2),
            ("500MB", 500_000_000),
            ("2M", 2_000_000),
            ("4096", 4096),
            ("10B", 10),
            ("64kib", 65536),
            ("1TiB", 1 << 40),
        ] {
            assert_eq!(text.parse::<ByteSize>().unwrap().bytes(), want, "{text}");
        }
        for bad in [
            "",
            "GiB",
            "0",
            "0GiB",
            "1.GiB",
            "-1GiB",
            "1PB",
            "1e9",
            "99999999999TiB",
        ] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} accepted");
        }
        for n in [1, 1023, 1024, 3 << 29, 50 * gib, 1 << 40, 12345] {
            let s = ByteSize::new(n).unwrap();
            assert_eq!(s.to_string().parse::<ByteSize>().unwrap(), s, "{s}");
        }
        assert_eq!(ByteSize::new(50 * gib).unwrap().to_string(), "50GiB");
        assert_eq!(ByteSize::new(1536).unwrap().to_string(), "1536B");
        assert_eq!(ByteSize::new(0), Err(SizeError::Zero));
    }

    #[derive(Debug, Deserialize)]
    struct Doc {
        size: Option<ByteSize>,
        #[serde(default, with = "duration::option")]
        wait: Option<Duration>,
    }

    fn doc(text: &str) -> Result<Doc, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn deserialized_once_with_errors_that_quote_the_value() {
        let d = doc("size = \"8MiB\"\nwait = \"1h 30m\"").unwrap();
        assert_eq!(d.size.map(ByteSize::bytes), Some(8 << 20));
        assert_eq!(d.wait, Some(Duration::from_secs(5400)));
        assert_eq!(
            doc("size = 4096").unwrap().size.map(ByteSize::bytes),
            Some(4096)
        );
        let d = doc("").unwrap();
        assert!(d.size.is_none() && d.wait.is_none());
        for (text, says) in [
            ("size = \"lots\"", "\"lots\" is not a size"),
            ("size = 0", "0 is not a size above zero"),
            ("size = -5", "-5 is not a size above zero"),
            ("size = 1.5", "expected a size such as"),
            ("wait = \"soon\"", "\"soon\" is not a duration"),
            (
                "wait = 30",
                "invalid type: integer `30`, expected a duration",
            ),
        ] {
            let err = doc(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
