//! `RepoName::parse` and `Tag::parse` against the distribution spec's grammar.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullgate_fuzz::{MAX_NAME_LEN, NAME, TAG};
use pullgate_oci::{RepoName, Tag};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let spec_name = s.len() <= MAX_NAME_LEN && NAME.is_match(s);
    match RepoName::parse(s) {
        Ok(name) => {
            assert!(spec_name, "accepted a name outside the grammar: {s:?}");
            assert_eq!(name.as_str(), s);
            assert_eq!(name.to_string(), s);
            assert_eq!(RepoName::parse(&name.to_string()).as_ref(), Ok(&name));
            assert_eq!(name.components().collect::<Vec<_>>().join("/"), s);
            assert_eq!(name.is_single_component(), !s.contains('/'));
            let prefixed = name.with_prefix("library");
            assert_eq!(prefixed.is_ok(), s.len() + "library/".len() <= MAX_NAME_LEN);
        }
        Err(_) => assert!(!spec_name, "refused a name the grammar allows: {s:?}"),
    }
    match Tag::parse(s) {
        Ok(tag) => {
            assert!(TAG.is_match(s), "accepted a tag outside the grammar: {s:?}");
            assert_eq!(tag.as_str(), s);
            assert_eq!(tag.to_string(), s);
        }
        Err(_) => assert!(!TAG.is_match(s), "refused a tag the grammar allows: {s:?}"),
    }
});
