use oci_spec::image::{ImageIndex, ImageManifest};

use crate::digest::Digest;
use crate::media::media_types;

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
    #[error("manifest is not valid JSON")]
    NotJson,
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
    pub fn parse(bytes: &[u8], declared: Option<&str>) -> Result<Self, ManifestError> {
        let head: Head = serde_json::from_slice(bytes).map_err(|_| ManifestError::NotJson)?;
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
                let index: ImageIndex = serde_json::from_slice(bytes)
                    .map_err(|_| ManifestError::Shape(media_type.clone()))?;
                index
                    .manifests()
                    .iter()
                    .map(descriptor)
                    .collect::<Result<Vec<_>, _>>()?
            }
            media_types::OCI_MANIFEST | media_types::DOCKER_MANIFEST => {
                let m: ImageManifest = serde_json::from_slice(bytes)
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

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ManifestInfo::parse(&bytes, None);
        }
    }
}
