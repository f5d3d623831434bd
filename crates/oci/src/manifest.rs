use oci_spec::image::{ImageIndex, ImageManifest};

use crate::digest::Digest;
use crate::media::media_types;
use crate::MANIFEST_SIZE_LIMIT;

/// What a manifest is and which content it names, read from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInfo {
    pub media_type: String,
    /// Config and layers of an image manifest, or the child manifests of an index.
    pub descriptors: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or JSON that is not an object.
    #[error("manifest is not a JSON object")]
    NotJson,
    #[error("manifest is larger than {MANIFEST_SIZE_LIMIT} bytes")]
    TooLarge,
    #[error("manifest does not match its media type {0}")]
    Shape(String),
    #[error("manifest names an invalid digest")]
    BadDigest,
}

#[derive(serde::Deserialize)]
struct Head {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    manifests: Option<serde_json::Value>,
}

impl ManifestInfo {
    /// Read a manifest. `declared` is the `Content-Type` it came with, if any; the
    /// document's own `mediaType` wins when both are present and the declared one is not
    /// a manifest type (registries often say `application/json`).
    /// Documents over [`MANIFEST_SIZE_LIMIT`] are refused unread.
    pub fn parse(bytes: &[u8], declared: Option<&str>) -> Result<Self, ManifestError> {
        if bytes.len() > MANIFEST_SIZE_LIMIT {
            return Err(ManifestError::TooLarge);
        }
        // JSON is UTF-8, but serde skips unknown fields without checking theirs.
        let text = std::str::from_utf8(bytes).map_err(|_| ManifestError::NotJson)?;
        // serde's derived structs also read a JSON array, its items as the fields in order:
        // `["",1,null]` would pass for a schema 1 manifest.
        if !text.trim_start().starts_with('{') {
            return Err(ManifestError::NotJson);
        }
        let head: Head = serde_json::from_str(text).map_err(|_| ManifestError::NotJson)?;
        let declared = declared
            .map(|d| d.split(';').next().unwrap_or("").trim())
            .filter(|d| media_types::ALL_MANIFESTS.contains(d));
        let media_type = match (head.media_type.as_deref(), declared) {
            (Some(m), _) if media_types::ALL_MANIFESTS.contains(&m) => m.to_owned(),
            (_, Some(d)) => d.to_owned(),
            _ if head.schema_version == Some(1) => media_types::DOCKER_V1_SIGNED.to_owned(),
            _ if head.manifests.is_some() => media_types::OCI_INDEX.to_owned(),
            _ => media_types::OCI_MANIFEST.to_owned(),
        };
        let descriptors = match media_type.as_str() {
            media_types::OCI_INDEX | media_types::DOCKER_LIST => {
                let index: ImageIndex = serde_json::from_str(text)
                    .map_err(|_| ManifestError::Shape(media_type.clone()))?;
                index
                    .manifests()
                    .iter()
                    .map(descriptor)
                    .collect::<Result<Vec<_>, _>>()?
            }
            media_types::OCI_MANIFEST | media_types::DOCKER_MANIFEST => {
                let m: ImageManifest = serde_json::from_str(text)
                    .map_err(|_| ManifestError::Shape(media_type.clone()))?;
                std::iter::once(m.config())
                    .chain(m.layers().iter())
                    .map(descriptor)
                    .collect::<Result<Vec<_>, _>>()?
            }
            // Schema 1 is served as stored but not looked into.
            _ => Vec::new(),
        };
        Ok(ManifestInfo {
            media_type,
            descriptors,
        })
    }

    pub fn is_index(&self) -> bool {
        media_types::is_index(&self.media_type)
    }

    /// The child manifest for `os/architecture`, for clients that cannot read an index.
    pub fn platform_manifest(&self, os: &str, architecture: &str) -> Option<&Descriptor> {
        self.descriptors.iter().find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == architecture)
        })
    }
}

fn descriptor(d: &oci_spec::image::Descriptor) -> Result<Descriptor, ManifestError> {
    Ok(Descriptor {
        media_type: d.media_type().to_string(),
        digest: Digest::parse(d.digest().as_ref()).map_err(|_| ManifestError::BadDigest)?,
        size: d.size(),
        platform: d.platform().as_ref().map(|p| Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":7}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":9}}]}}"#,
            media_types::OCI_MANIFEST,
            d('a'),
            d('b')
        );
        let info = ManifestInfo::parse(m.as_bytes(), Some("application/json")).unwrap();
        assert_eq!(info.media_type, media_types::OCI_MANIFEST);
        assert_eq!(info.descriptors.len(), 2);
        assert_eq!(info.descriptors[1].size, 9);
        assert!(!info.is_index());
    }

    #[test]
    fn index_by_declared_type() {
        let m = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":3,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            media_types::DOCKER_MANIFEST,
            d('c')
        );
        let info = ManifestInfo::parse(m.as_bytes(), Some(media_types::DOCKER_LIST)).unwrap();
        assert_eq!(info.media_type, media_types::DOCKER_LIST);
        assert!(info.platform_manifest("linux", "arm64").is_some());
        assert!(info.platform_manifest("linux", "amd64").is_none());
    }

    /// Regression: a JSON array with the right items in the right places was read as a
    /// schema 1 manifest.
    #[test]
    fn arrays_are_not_manifests() {
        for doc in [r#"["",1,null]"#, r#" [null, 1, null]"#, "[]", "null", "1"] {
            assert_eq!(
                ManifestInfo::parse(doc.as_bytes(), None),
                Err(ManifestError::NotJson),
                "{doc}"
            );
        }
        let v1 = br#" {"schemaVersion":1}"#;
        let info = ManifestInfo::parse(v1, None).unwrap();
        assert_eq!(info.media_type, media_types::DOCKER_V1_SIGNED);
    }

    /// Regression (found by the `manifest` fuzz target): serde skips unknown fields without
    /// checking their UTF-8, so a manifest that is not JSON at all was accepted.
    #[test]
    fn invalid_utf8_is_not_json() {
        let mut doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"a","digest":"{}","size":1}},"layers":[],"x":"?"}}"#,
            media_types::OCI_MANIFEST,
            d('a')
        )
        .into_bytes();
        assert!(ManifestInfo::parse(&doc, None).is_ok());
        let at = doc.iter().position(|&b| b == b'?').unwrap();
        doc[at] = 0xff;
        assert_eq!(ManifestInfo::parse(&doc, None), Err(ManifestError::NotJson));
    }

    #[test]
    fn size_limit() {
        let mut doc = br#"{"schemaVersion":1}"#.to_vec();
        doc.resize(MANIFEST_SIZE_LIMIT, b' ');
        assert!(ManifestInfo::parse(&doc, None).is_ok());
        doc.push(b' ');
        assert_eq!(
            ManifestInfo::parse(&doc, None),
            Err(ManifestError::TooLarge)
        );
    }

    #[test]
    fn rejects() {
        assert_eq!(
            ManifestInfo::parse(b"nope", None),
            Err(ManifestError::NotJson)
        );
        let bad = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}"}}"#,
            media_types::OCI_MANIFEST
        );
        assert!(matches!(
            ManifestInfo::parse(bad.as_bytes(), None),
            Err(ManifestError::Shape(_))
        ));
    }

    fn digest() -> impl Strategy<Value = Digest> {
        "[0-9a-f]{64}".prop_map(|h| Digest::parse(&format!("sha256:{h}")).unwrap())
    }

    fn platform() -> impl Strategy<Value = Option<Platform>> {
        proptest::option::of(
            (
                "linux|windows|darwin",
                "amd64|arm64|arm|s390x",
                proptest::option::of("v[5-8]"),
            )
                .prop_map(|(os, architecture, variant)| Platform {
                    os,
                    architecture,
                    variant,
                }),
        )
    }

    fn descriptor(with_platform: bool) -> impl Strategy<Value = Descriptor> {
        let platform = if with_platform {
            platform().boxed()
        } else {
            Just(None).boxed()
        };
        (
            "application/vnd\\.[a-z]{1,10}\\.[a-z.]{1,20}(\\+json|\\+gzip)?",
            digest(),
            0u64..=u64::from(u32::MAX) * 4,
            platform,
        )
            .prop_map(|(media_type, digest, size, platform)| Descriptor {
                media_type,
                digest,
                size,
                platform,
            })
    }

    fn to_json(d: &Descriptor) -> serde_json::Value {
        let mut v = serde_json::json!({
            "mediaType": d.media_type,
            "digest": d.digest.to_string(),
            "size": d.size,
        });
        if let Some(p) = &d.platform {
            v["platform"] = serde_json::json!({ "os": p.os, "architecture": p.architecture });
            if let Some(variant) = &p.variant {
                v["platform"]["variant"] = variant.as_str().into();
            }
        }
        v
    }

    /// Where the media type is said: in the document, in `Content-Type`, both, or neither.
    fn place(
        doc: &mut serde_json::Value,
        media_type: &str,
        how: u8,
        charset: bool,
    ) -> Option<String> {
        if how & 1 != 0 {
            doc["mediaType"] = media_type.into();
        }
        let declared = if how & 2 != 0 {
            media_type
        } else {
            "application/json"
        };
        (how & 4 == 0).then(|| match charset {
            true => format!("{declared}; charset=utf-8"),
            false => declared.to_owned(),
        })
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ManifestInfo::parse(&bytes, None);
        }

        #[test]
        fn image_manifests_name_config_then_layers(
            docker in any::<bool>(),
            config in descriptor(false),
            layers in proptest::collection::vec(descriptor(false), 0..6),
            how in 0u8..8,
            charset in any::<bool>(),
        ) {
            let media_type = if docker { media_types::DOCKER_MANIFEST } else { media_types::OCI_MANIFEST };
            let mut doc = serde_json::json!({
                "schemaVersion": 2,
                "config": to_json(&config),
                "layers": layers.iter().map(to_json).collect::<Vec<_>>(),
            });
            let declared = place(&mut doc, media_type, how, charset);
            let info = ManifestInfo::parse(doc.to_string().as_bytes(), declared.as_deref()).unwrap();
            // Said nowhere, an image manifest is taken for an OCI one.
            let said = how & 1 != 0 || (how & 2 != 0 && how & 4 == 0);
            let expected = if said { media_type } else { media_types::OCI_MANIFEST };
            prop_assert_eq!(info.media_type.as_str(), expected);
            prop_assert!(!info.is_index());
            let mut want = vec![config];
            want.extend(layers);
            prop_assert_eq!(info.descriptors, want);
        }

        #[test]
        fn indexes_name_their_children_and_platforms(
            docker in any::<bool>(),
            children in proptest::collection::vec(descriptor(true), 0..8),
            how in 0u8..8,
            charset in any::<bool>(),
            os in "linux|windows",
            arch in "amd64|arm64",
        ) {
            let media_type = if docker { media_types::DOCKER_LIST } else { media_types::OCI_INDEX };
            let mut doc = serde_json::json!({
                "schemaVersion": 2,
                "manifests": children.iter().map(to_json).collect::<Vec<_>>(),
            });
            let declared = place(&mut doc, media_type, how, charset);
            let info = ManifestInfo::parse(doc.to_string().as_bytes(), declared.as_deref()).unwrap();
            let said = how & 1 != 0 || (how & 2 != 0 && how & 4 == 0);
            // A `manifests` array is what makes an unlabelled document an index.
            let expected = if said { media_type } else { media_types::OCI_INDEX };
            prop_assert_eq!(info.media_type.as_str(), expected);
            prop_assert!(info.is_index());
            let first = children.iter().find(|d| {
                d.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == arch)
            });
            prop_assert_eq!(info.platform_manifest(&os, &arch), first);
            prop_assert_eq!(info.descriptors, children);
        }

        #[test]
        fn a_bad_digest_fails_the_whole_manifest(
            config in descriptor(false),
            bad in "sha256:[0-9a-f]{63}|sha256:[0-9A-F]{64}|md5:[0-9a-f]{32}|[a-z]{1,10}",
        ) {
            let mut layer = to_json(&config);
            layer["digest"] = bad.into();
            let doc = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": media_types::OCI_MANIFEST,
                "config": to_json(&config),
                "layers": [layer],
            });
            prop_assert!(ManifestInfo::parse(doc.to_string().as_bytes(), None).is_err());
        }

        #[test]
        fn only_json_objects_are_manifests(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            json in prop_oneof![
                Just("[]".to_owned()),
                Just("null".to_owned()),
                "-?[0-9]{1,5}",
                "\"[a-z]{0,8}\"",
                "\\[(null|1|2|\\{\\}|\\[\\]|\"[a-z]{0,4}\")(,(null|1|2|\\{\\}|\\[\\]|\"[a-z]{0,4}\")){0,6}\\]",
            ],
            declared in proptest::option::of(proptest::sample::select(media_types::ALL_MANIFESTS)),
        ) {
            // Syntax and UTF-8 only: serde_json's `Value` also refuses lone surrogates.
            let syntax = std::str::from_utf8(&bytes).is_ok()
                && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
            if !syntax {
                prop_assert_eq!(ManifestInfo::parse(&bytes, declared), Err(ManifestError::NotJson));
            }
            prop_assert!(ManifestInfo::parse(json.as_bytes(), declared).is_err(), "{json} was accepted");
        }
    }
}
