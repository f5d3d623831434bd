//! `Reference::parse`: a tag or a digest, never confused, and written back as given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullgate_fuzz::{DIGEST, TAG};
use pullgate_oci::{NameError, Reference};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match Reference::parse(s) {
        Ok(r @ Reference::Tag(_)) => {
            assert!(TAG.is_match(s) && !s.contains(':'), "tag {s:?}");
            assert!(r.as_digest().is_none());
            assert_eq!(r.to_string(), s);
        }
        Ok(r @ Reference::Digest(_)) => {
            assert!(DIGEST.is_match(s), "digest {s:?}");
            assert_eq!(r.as_digest().map(ToString::to_string).as_deref(), Some(s));
            assert_eq!(r.to_string(), s);
        }
        // The router answers DIGEST_INVALID for these: only text with a colon is one.
        Err(NameError::BadDigest(_)) => assert!(s.contains(':') && !DIGEST.is_match(s)),
        Err(_) => assert!(!s.contains(':') && !TAG.is_match(s), "refused {s:?}"),
    }
});
