//! `ManifestInfo::parse`: the first byte picks the `Content-Type` it came with, the rest is
//! the document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullgate_oci::{media_types, Digest, ManifestError, ManifestInfo, MANIFEST_SIZE_LIMIT};

const DECLARED: &[Option<&str>] = &[
    None,
    Some(media_types::OCI_MANIFEST),
    Some(media_types::OCI_INDEX),
    Some(media_types::DOCKER_MANIFEST),
    Some(media_types::DOCKER_LIST),
    Some(media_types::DOCKER_V1),
    Some(media_types::DOCKER_V1_SIGNED),
    Some("application/json"),
    Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
    Some(""),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, doc)) = data.split_first() else {
        return;
    };
    let declared = DECLARED[usize::from(pick) % DECLARED.len()];
    let parsed = ManifestInfo::parse(doc, declared);
    // JSON syntax and UTF-8, as a second opinion (serde_json's `Value` would also refuse lone
    // surrogates, which the JSON grammar allows).
    let object = std::str::from_utf8(doc).is_ok_and(|t| t.trim_start().starts_with('{'))
        && serde_json::from_slice::<serde::de::IgnoredAny>(doc).is_ok();
    let info = match parsed {
        Ok(info) => info,
        // Also JSON objects whose known fields have the wrong type, or appear twice.
        Err(ManifestError::NotJson) => return,
        Err(ManifestError::TooLarge) => {
            assert!(doc.len() > MANIFEST_SIZE_LIMIT);
            return;
        }
        Err(e) => {
            assert!(object, "{e} for something that is not a JSON object");
            return;
        }
    };
    assert!(object, "accepted something that is not a JSON object");
    assert!(media_types::ALL_MANIFESTS.contains(&info.media_type.as_str()));
    assert_eq!(
        info.is_index(),
        matches!(
            info.media_type.as_str(),
            media_types::OCI_INDEX | media_types::DOCKER_LIST
        )
    );
    // An image manifest always has its config.
    if matches!(
        info.media_type.as_str(),
        media_types::OCI_MANIFEST | media_types::DOCKER_MANIFEST
    ) {
        assert!(!info.descriptors.is_empty());
    }
    if !info.is_index() {
        assert!(info.descriptors.iter().all(|d| d.platform.is_none()));
    }
    for d in &info.descriptors {
        assert_eq!(Digest::parse(&d.digest.to_string()).as_ref(), Ok(&d.digest));
        if let Some(p) = &d.platform {
            let found = info.platform_manifest(&p.os, &p.architecture);
            let found = found.and_then(|f| f.platform.as_ref());
            assert!(found.is_some_and(|f| f.os == p.os && f.architecture == p.architecture));
        }
    }
});
