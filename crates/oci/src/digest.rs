use std::fmt;
use std::str::FromStr;

/// A content digest such as `sha256:9f86…`.
///
/// Only registered algorithms with lower-case hex encodings are accepted, so the textual
/// form is canonical and safe to use as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest has no algorithm prefix")]
    MissingAlgorithm,
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    #[error("digest encoding must be {expected} lower-case hex characters")]
    BadEncoding { expected: usize },
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let (alg, hex) = s.split_once(':').ok_or(DigestError::MissingAlgorithm)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::UnsupportedAlgorithm),
        };
        let expected = algorithm.hex_len();
        if hex.len() != expected || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::BadEncoding { expected });
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(bytes);
        h.finish()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex encoding, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Whether `bytes` hash to this digest.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        let mut h = Hasher::new(self.algorithm);
        h.update(bytes);
        h.finish() == *self
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

/// Incremental hashing for any supported [`Algorithm`], with ring's implementation: as fast
/// as `sha2` where the CPU has SHA-NI (both use it, picked at run time), and OpenSSL's
/// assembly where it has not, where `sha2` falls back to portable code at about a fifth of
/// the speed (`docs/benchmarks.md`).
pub struct Hasher {
    algorithm: Algorithm,
    context: ring::digest::Context,
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        let ring_algorithm = match algorithm {
            Algorithm::Sha256 => &ring::digest::SHA256,
            Algorithm::Sha512 => &ring::digest::SHA512,
        };
        Hasher {
            algorithm,
            context: ring::digest::Context::new(ring_algorithm),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.context.update(bytes);
    }

    pub fn finish(self) -> Digest {
        Digest {
            algorithm: self.algorithm,
            hex: hex::encode(self.context.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The ingest's hasher (ring) against an independent implementation (sha2), for
        /// both algorithms, fed in arbitrary pieces.
        #[test]
        fn hasher_agrees_with_sha2(data in proptest::collection::vec(any::<u8>(), 0..4096), cut in 0usize..4096) {
            use sha2::Digest as _;
            let cut = cut.min(data.len());
            for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
                let mut h = Hasher::new(algorithm);
                h.update(&data[..cut]);
                h.update(&data[cut..]);
                let expected = match algorithm {
                    Algorithm::Sha256 => hex::encode(sha2::Sha256::digest(&data)),
                    Algorithm::Sha512 => hex::encode(sha2::Sha512::digest(&data)),
                };
                let got = h.finish();
                prop_assert_eq!(got.hex(), expected.as_str());
            }
        }
    }

    #[test]
    fn table() {
        let ok = format!("sha256:{}", "a".repeat(64));
        let cases: &[(&str, Result<(), DigestError>)] = &[
            (&ok, Ok(())),
            ("sha256:abc", Err(DigestError::BadEncoding { expected: 64 })),
            (
                &format!("sha256:{}", "A".repeat(64)),
                Err(DigestError::BadEncoding { expected: 64 }),
            ),
            (&format!("sha512:{}", "0".repeat(128)), Ok(())),
            (
                &format!("md5:{}", "0".repeat(32)),
                Err(DigestError::UnsupportedAlgorithm),
            ),
            ("nocolon", Err(DigestError::MissingAlgorithm)),
            (
                "sha256:../../../../etc/passwd",
                Err(DigestError::BadEncoding { expected: 64 }),
            ),
            ("", Err(DigestError::MissingAlgorithm)),
        ];
        for (input, want) in cases {
            assert_eq!(Digest::parse(input).map(|_| ()), *want, "{input}");
        }
    }

    #[test]
    fn hashes_known_value() {
        let d = Digest::sha256_of(b"test");
        assert_eq!(
            d.to_string(),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert!(d.matches(b"test"));
        assert!(!d.matches(b"tesT"));
    }

    fn valid() -> impl Strategy<Value = (Algorithm, String)> {
        prop_oneof![
            "[0-9a-f]{64}".prop_map(|h| (Algorithm::Sha256, h)),
            "[0-9a-f]{128}".prop_map(|h| (Algorithm::Sha512, h)),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(s in ".{0,200}|(sha256|sha512|md5|SHA256):[0-9a-fA-F]{60,130}") {
            if let Ok(d) = Digest::parse(&s) {
                prop_assert_eq!(d.to_string(), s.clone());
                prop_assert_eq!(d.hex().len(), d.algorithm().hex_len());
                prop_assert_eq!(s.parse::<Digest>(), Ok(d));
            }
        }

        #[test]
        fn valid_digests_are_accepted((algorithm, hex) in valid()) {
            let s = format!("{}:{hex}", algorithm.as_str());
            let d = Digest::parse(&s).unwrap();
            prop_assert_eq!(d.algorithm(), algorithm);
            prop_assert_eq!(d.hex(), hex.as_str());
            prop_assert_eq!(d.to_string(), s);
        }

        #[test]
        fn mutated_digests_are_rejected(
            (algorithm, hex) in valid(),
            at in any::<proptest::sample::Index>(),
            how in 0u8..7,
            junk in "[^0-9a-f]",
        ) {
            let i = at.index(hex.len());
            let (head, tail) = hex.split_at(i);
            let alg = algorithm.as_str();
            let other = match algorithm {
                Algorithm::Sha256 => Algorithm::Sha512,
                Algorithm::Sha512 => Algorithm::Sha256,
            };
            let bad = match how {
                0 => format!("{alg}:{head}{}", &tail[1..]),
                1 => format!("{alg}:{head}0{tail}"),
                2 => format!("{alg}:{head}{junk}{}", &tail[1..]),
                3 => format!("{alg}:{}", hex.to_ascii_uppercase()),
                // The right length for the other algorithm is the wrong one for this.
                4 => format!("{}:{hex}", other.as_str()),
                5 => format!("{}:{hex}", alg.to_ascii_uppercase()),
                _ => format!("{alg}{hex}"),
            };
            // Upper-casing digits only changes nothing; every other edit must be refused.
            prop_assume!(bad != format!("{alg}:{hex}"));
            prop_assert!(Digest::parse(&bad).is_err(), "{bad} was accepted");
        }

        #[test]
        fn computed_digests_parse_back(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let d = Digest::sha256_of(&bytes);
            prop_assert_eq!(Digest::parse(&d.to_string()), Ok(d.clone()));
            prop_assert!(d.matches(&bytes));
        }
    }
}
