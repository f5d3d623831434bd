/// The manifest media types a mirror deals in.
pub mod media_types {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    pub const OCTET_STREAM: &str = "application/octet-stream";

    /// Everything we ask an upstream for, most preferred first. Asking for all of them
    /// means a tag resolves to the same bytes whatever the asking client accepts, so one
    /// cached copy serves every client.
    pub const ALL_MANIFESTS: &[&str] = &[
        OCI_INDEX,
        DOCKER_LIST,
        OCI_MANIFEST,
        DOCKER_MANIFEST,
        DOCKER_V1_SIGNED,
        DOCKER_V1,
    ];

    pub fn is_index(media_type: &str) -> bool {
        media_type == OCI_INDEX || media_type == DOCKER_LIST
    }
}

/// The media types a client accepts, merged from every `Accept` header line it sent
/// (Docker sends one line per type; containerd one comma-separated line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptList {
    types: Vec<String>,
    wildcard: bool,
}

/// No client needs more; a longer list is cut rather than stored.
const MAX_ACCEPT_TYPES: usize = 64;

impl AcceptList {
    /// Merge header values. Parameters (`;q=0.5`) are ignored: clients of registries do
    /// not rank manifest types, they list the ones they can parse.
    pub fn from_headers<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut list = AcceptList::default();
        for value in values {
            for item in value.split(',') {
                let media = item.split(';').next().unwrap_or("").trim();
                if media.is_empty() {
                    continue;
                }
                if media == "*/*" || media == "application/*" {
                    list.wildcard = true;
                } else if list.types.len() < MAX_ACCEPT_TYPES
                    && !list.types.iter().any(|t| t.eq_ignore_ascii_case(media))
                {
                    list.types.push(media.to_ascii_lowercase());
                }
            }
        }
        list
    }

    /// Whether a manifest of `media_type` may be served to this client. A client that
    /// names no manifest type (or sends `*/*`) takes whatever there is; `application/json`
    /// is Docker's way of asking for anything.
    pub fn accepts(&self, media_type: &str) -> bool {
        if self.wildcard || !self.names_manifest_types() {
            return true;
        }
        self.types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(media_type))
    }

    fn names_manifest_types(&self) -> bool {
        self.types
            .iter()
            .any(|t| media_types::ALL_MANIFESTS.contains(&t.as_str()))
    }

    pub fn types(&self) -> &[String] {
        &self.types
    }
}

#[cfg(test)]
mod tests {
    use super::media_types::*;
    use super::*;

    #[test]
    fn merges_lines_and_lists() {
        let a = AcceptList::from_headers([
            "application/vnd.oci.image.index.v1+json",
            "application/json, application/vnd.docker.distribution.manifest.v2+json;q=0.9",
        ]);
        assert_eq!(a.types().len(), 3);
        assert!(a.accepts(OCI_INDEX));
        assert!(a.accepts(DOCKER_MANIFEST));
        assert!(!a.accepts(OCI_MANIFEST));
    }

    #[test]
    fn wildcards_and_empty_accept_everything() {
        assert!(AcceptList::from_headers([]).accepts(OCI_MANIFEST));
        assert!(AcceptList::from_headers(["text/html"]).accepts(OCI_MANIFEST));
        let c = AcceptList::from_headers([format!("{DOCKER_MANIFEST}, */*").as_str()]);
        assert!(c.accepts(OCI_INDEX));
    }
}
