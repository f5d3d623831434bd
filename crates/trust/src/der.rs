//! A minimal DER reader: just enough to split a `SubjectPublicKeyInfo` and to read a few
//! fields of a certificate that webpki has already parsed and verified (SAN email and URI
//! names, the Fulcio issuer extensions, the issuer DN). Definite lengths only, at most four
//! length octets, every read bounded by its input: a malformed encoding is `None`, never a
//! panic.

/// Universal and context tags this crate reads.
pub(crate) mod tag {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const UTF8_STRING: u8 = 0x0c;
    pub const PRINTABLE_STRING: u8 = 0x13;
    pub const T61_STRING: u8 = 0x14;
    pub const IA5_STRING: u8 = 0x16;
    pub const UTC_TIME: u8 = 0x17;
    pub const GENERALIZED_TIME: u8 = 0x18;
    pub const BMP_STRING: u8 = 0x1e;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    /// `[0]` constructed: a certificate's explicit version.
    pub const CONTEXT_0: u8 = 0xa0;
    /// `[3]` constructed: a certificate's extensions.
    pub const CONTEXT_3: u8 = 0xa3;
    /// `[1]` primitive: `rfc822Name` in a `GeneralName`.
    pub const SAN_EMAIL: u8 = 0x81;
    /// `[6]` primitive: `uniformResourceIdentifier` in a `GeneralName`.
    pub const SAN_URI: u8 = 0x86;
}

/// A cursor over a run of DER elements.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next element's tag and contents.
    pub(crate) fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.rest.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let octets = usize::from(first & 0x7f);
            if octets == 0 || octets > 4 || rest.len() < octets {
                return None;
            }
            let (len_bytes, after) = rest.split_at(octets);
            rest = after;
            len_bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        self.rest = after;
        Some((tag, contents))
    }

    /// The next element, which must have `expected` as its tag.
    pub(crate) fn take(&mut self, expected: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (tag, contents) if tag == expected => Some(contents),
            _ => None,
        }
    }

    /// The next element if it has tag `expected`; otherwise nothing is consumed.
    pub(crate) fn optional(&mut self, expected: u8) -> Option<&'a [u8]> {
        let mut peek = *self;
        match peek.next() {
            Some((tag, contents)) if tag == expected => {
                *self = peek;
                Some(contents)
            }
            _ => None,
        }
    }
}

/// An OID's contents in dotted decimal (`1.3.6.1.4.1.57264.1.1`), for names this crate has
/// no word for.
pub(crate) fn oid_to_string(oid: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for (i, &b) in oid.iter().enumerate() {
        if value > (u64::MAX >> 7) {
            return None;
        }
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        } else if i + 1 == oid.len() {
            return None;
        }
    }
    if arcs.is_empty() {
        return None;
    }
    Some(
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_elements_and_rejects_truncation() {
        type Element<'a> = Option<(u8, &'a [u8])>;
        let cases: &[(&[u8], Element)] = &[
            (&[0x02, 0x01, 0x05], Some((0x02, &[0x05]))),
            (&[0x04, 0x81, 0x01, 0xaa], Some((0x04, &[0xaa]))),
            (&[0x04, 0x02, 0xaa], None),
            (&[0x04], None),
            (&[0x04, 0x80], None),
            (&[0x04, 0x85, 1, 0, 0, 0, 0], None),
            (&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff], None),
        ];
        for (input, expected) in cases {
            assert_eq!(Reader::new(input).next(), *expected, "{input:02x?}");
        }
    }

    #[test]
    fn optional_consumes_only_a_match() {
        let mut r = Reader::new(&[0x02, 0x01, 0x01, 0x04, 0x00]);
        assert!(r.optional(tag::CONTEXT_0).is_none());
        assert_eq!(r.optional(tag::INTEGER), Some(&[0x01][..]));
        assert_eq!(r.take(tag::OCTET_STRING), Some(&[][..]));
        assert!(r.is_empty());
    }

    #[test]
    fn oids_in_dotted_decimal() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (&[0x55, 0x1d, 0x11], Some("2.5.29.17")),
            (
                &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xbf, 0x30, 0x01, 0x01],
                Some("1.3.6.1.4.1.57264.1.1"),
            ),
            (&[0x2b, 0x83], None),
            (&[], None),
        ];
        for (oid, expected) in cases {
            assert_eq!(oid_to_string(oid).as_deref(), *expected);
        }
    }
}
