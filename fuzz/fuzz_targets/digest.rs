//! `Digest::parse` against the spec's digest grammar (registered algorithms only), and the
//! digests pullgate computes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullgate_fuzz::DIGEST;
use pullgate_oci::{Algorithm, Digest, Hasher};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        match Digest::parse(s) {
            Ok(d) => {
                assert!(DIGEST.is_match(s), "accepted {s:?}");
                assert_eq!(d.to_string(), s);
                assert_eq!(format!("{}:{}", d.algorithm().as_str(), d.hex()), s);
                assert_eq!(s.parse::<Digest>().as_ref(), Ok(&d));
            }
            Err(_) => assert!(!DIGEST.is_match(s), "refused {s:?}"),
        }
    }
    // Whatever we compute must parse back, however the bytes were fed to the hasher.
    let whole = Digest::sha256_of(data);
    assert_eq!(Digest::parse(&whole.to_string()).as_ref(), Ok(&whole));
    assert!(whole.matches(data));
    let mut split = Hasher::new(Algorithm::Sha256);
    let (a, b) = data.split_at(data.len() / 3);
    split.update(a);
    split.update(b);
    assert_eq!(split.finish(), whole);
    let mut long = Hasher::new(Algorithm::Sha512);
    long.update(data);
    let long = long.finish();
    assert_eq!(Digest::parse(&long.to_string()).as_ref(), Ok(&long));
});
