/// A single `Range: bytes=…` request, before the blob's size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-b`
    FromTo(u64, u64),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// A satisfiable range, resolved against a size: `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Syntax we do not serve (multiple ranges, other units): serve the whole blob.
    #[error("range header ignored")]
    Ignored,
    #[error("range not satisfiable")]
    Unsatisfiable,
}

impl RangeSpec {
    /// Parse a `Range` header. Multi-range and non-byte units are [`RangeError::Ignored`]
    /// (RFC 9110 lets a server answer those with the whole representation).
    pub fn parse(header: &str) -> Result<Self, RangeError> {
        // Range units are case-insensitive (RFC 9110 section 14.1).
        let (unit, spec) = header.trim().split_once('=').ok_or(RangeError::Ignored)?;
        if !unit.eq_ignore_ascii_case("bytes") {
            return Err(RangeError::Ignored);
        }
        let spec = spec.trim();
        if spec.contains(',') {
            return Err(RangeError::Ignored);
        }
        let (a, b) = spec.split_once('-').ok_or(RangeError::Ignored)?;
        let num = |s: &str| -> Result<u64, RangeError> {
            if s.is_empty() || s.len() > 19 || !s.bytes().all(|x| x.is_ascii_digit()) {
                return Err(RangeError::Ignored);
            }
            s.parse().map_err(|_| RangeError::Ignored)
        };
        let (a, b) = (a.trim(), b.trim());
        match (a.is_empty(), b.is_empty()) {
            (true, true) => Err(RangeError::Ignored),
            (true, false) => Ok(RangeSpec::Suffix(num(b)?)),
            (false, true) => Ok(RangeSpec::From(num(a)?)),
            (false, false) => {
                let (a, b) = (num(a)?, num(b)?);
                if b < a {
                    return Err(RangeError::Ignored);
                }
                Ok(RangeSpec::FromTo(a, b))
            }
        }
    }

    /// Resolve against the blob's size.
    pub fn resolve(self, size: u64) -> Result<ByteRange, RangeError> {
        let r = match self {
            RangeSpec::FromTo(a, b) if a < size => ByteRange {
                start: a,
                end: b.min(size - 1),
            },
            RangeSpec::From(a) if a < size => ByteRange {
                start: a,
                end: size - 1,
            },
            RangeSpec::Suffix(n) if n > 0 && size > 0 => ByteRange {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            _ => return Err(RangeError::Unsatisfiable),
        };
        Ok(r)
    }
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// `bytes start-end/size`
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let r = |s: &str, size| RangeSpec::parse(s).and_then(|x| x.resolve(size));
        assert_eq!(r("bytes=0-9", 100), Ok(ByteRange { start: 0, end: 9 }));
        assert_eq!(r("bytes=90-200", 100), Ok(ByteRange { start: 90, end: 99 }));
        assert_eq!(r("bytes=50-", 100), Ok(ByteRange { start: 50, end: 99 }));
        assert_eq!(r("bytes=-10", 100), Ok(ByteRange { start: 90, end: 99 }));
        assert_eq!(r("bytes=-1000", 100), Ok(ByteRange { start: 0, end: 99 }));
        assert_eq!(r("bytes=100-", 100), Err(RangeError::Unsatisfiable));
        assert_eq!(r("bytes=-0", 100), Err(RangeError::Unsatisfiable));
        assert_eq!(r("bytes=0-0", 0), Err(RangeError::Unsatisfiable));
        assert_eq!(r("bytes=0-1,5-6", 100), Err(RangeError::Ignored));
        assert_eq!(r("items=0-1", 100), Err(RangeError::Ignored));
        assert_eq!(r("Bytes=0-9", 100), Ok(ByteRange { start: 0, end: 9 }));
        assert_eq!(r("BYTES=-10", 100), Ok(ByteRange { start: 90, end: 99 }));
        assert_eq!(r("bytes 0-9", 100), Err(RangeError::Ignored));
        assert_eq!(r("bytes =0-9", 100), Err(RangeError::Ignored));
        assert_eq!(r("bytes=5-1", 100), Err(RangeError::Ignored));
        assert_eq!(
            r("bytes=99999999999999999999-", 100),
            Err(RangeError::Ignored)
        );
        assert_eq!(
            ByteRange { start: 0, end: 9 }.content_range(100),
            "bytes 0-9/100"
        );
    }

    /// Largest position the parser reads: 19 digits always fit in a u64.
    const MAX_POS: u64 = 9_999_999_999_999_999_999;

    fn spec() -> impl Strategy<Value = RangeSpec> {
        let pos = prop_oneof![0u64..200, 0..=MAX_POS];
        prop_oneof![
            (pos.clone(), pos.clone()).prop_map(|(a, b)| RangeSpec::FromTo(a.min(b), a.max(b))),
            pos.clone().prop_map(RangeSpec::From),
            pos.prop_map(RangeSpec::Suffix),
        ]
    }

    fn size() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..300, any::<u64>()]
    }

    fn render(spec: RangeSpec) -> String {
        match spec {
            RangeSpec::FromTo(a, b) => format!("bytes={a}-{b}"),
            RangeSpec::From(a) => format!("bytes={a}-"),
            RangeSpec::Suffix(n) => format!("bytes=-{n}"),
        }
    }

    proptest! {
        #[test]
        fn resolved_ranges_fit(s in "bytes=[0-9]{0,4}-[0-9]{0,4}", size in 0u64..5000) {
            if let Ok(r) = RangeSpec::parse(&s).and_then(|x| x.resolve(size)) {
                prop_assert!(r.start <= r.end && r.end < size);
            }
        }

        #[test]
        fn parse_is_total_and_canonical(s in "\\PC{0,40}|[ ]?(bytes|Bytes|items)=[ 0-9,-]{0,30}") {
            if let Ok(spec) = RangeSpec::parse(&s) {
                prop_assert_eq!(RangeSpec::parse(&render(spec)), Ok(spec));
            }
        }

        #[test]
        fn written_specs_parse_back(spec in spec(), pad in "[ \t]{0,2}") {
            prop_assert_eq!(RangeSpec::parse(&render(spec)), Ok(spec));
            prop_assert_eq!(RangeSpec::parse(&format!("{pad}{}{pad}", render(spec))), Ok(spec));
        }

        /// Range units are case-insensitive (RFC 9110 section 14.1).
        #[test]
        fn the_unit_is_read_in_any_case(spec in spec(), upper in proptest::collection::vec(any::<bool>(), 5)) {
            let text = render(spec);
            let unit: String = "bytes"
                .chars()
                .zip(&upper)
                .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                .collect();
            prop_assert_eq!(RangeSpec::parse(&text.replacen("bytes", &unit, 1)), Ok(spec));
        }

        /// RFC 9110 section 14.1.2: a range is satisfiable when its first position is inside
        /// the representation, or it is a non-empty suffix of a non-empty one; the last
        /// position is clamped, and a suffix longer than the representation is all of it.
        #[test]
        fn resolve_follows_rfc_9110(spec in spec(), size in size()) {
            let expected = match spec {
                RangeSpec::FromTo(a, b) if a < size => Some((a, b.min(size - 1))),
                RangeSpec::From(a) if a < size => Some((a, size - 1)),
                RangeSpec::Suffix(n) if n > 0 && size > 0 => Some((size - n.min(size), size - 1)),
                _ => None,
            };
            match spec.resolve(size) {
                Ok(r) => {
                    prop_assert_eq!(Some((r.start, r.end)), expected);
                    prop_assert!(r.start <= r.end && r.end < size);
                    prop_assert_eq!(r.len(), r.end - r.start + 1);
                    prop_assert!(!r.is_empty());
                    prop_assert_eq!(r.content_range(size), format!("bytes {}-{}/{size}", r.start, r.end));
                }
                Err(e) => {
                    prop_assert_eq!(e, RangeError::Unsatisfiable);
                    prop_assert_eq!(expected, None);
                }
            }
        }

        /// What we do not serve is ignored (the whole blob is sent), never refused with 416.
        #[test]
        fn unserved_forms_are_ignored(a in 0u64..1000, b in 0u64..1000, c in 0u64..1000, unit in "[a-z]{1,6}") {
            prop_assert_eq!(RangeSpec::parse(&format!("bytes={a}-{b},{c}-")), Err(RangeError::Ignored));
            if unit != "bytes" {
                prop_assert_eq!(RangeSpec::parse(&format!("{unit}={a}-{b}")), Err(RangeError::Ignored));
            }
            if b < a {
                prop_assert_eq!(RangeSpec::parse(&format!("bytes={a}-{b}")), Err(RangeError::Ignored));
            }
            prop_assert_eq!(RangeSpec::parse(&format!("bytes={a}{c}0000000000000000000-")), Err(RangeError::Ignored));
        }
    }
}
