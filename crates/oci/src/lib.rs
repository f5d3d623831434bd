//! The vocabulary every other pullgate crate speaks: the OCI distribution types, parsed once
//! at the edge and passed around as types, never as `&str`.
//!
//! What it is: [`Digest`], [`RepoName`], [`Tag`], [`Reference`], media types and the merged
//! client [`AcceptList`], the spec's [`ErrorCode`] table and its JSON [`ErrorBody`],
//! [`Challenge`] (`WWW-Authenticate` parsing), [`ByteRange`] (single-range `Range` headers),
//! [`ManifestInfo`] (what a manifest is and which descriptors it names), and registry host
//! names ([`canonical_host`]: Docker Hub's aliases are one registry), an upstream's identity
//! ([`UpstreamId`]), the `<upstream>/<repository>[:<tag>]` patterns of rules ([`ImagePattern`],
//! [`repo_pattern_matches`]) and the one spelling of a pull scope ([`PullScope`]).
//!
//! What it is not: no I/O, no async, no HTTP library. Parsers here are total: any input
//! yields a value or a typed error, never a panic (proptests beside each parser hold that).

mod challenge;
mod digest;
mod error;
mod manifest;
mod media;
mod name;
mod pattern;
mod range;
mod registry;
mod upstream;

pub use challenge::{Challenge, ChallengeError};
pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::{ErrorBody, ErrorCode, ErrorEntry};
pub use manifest::{Descriptor, ManifestError, ManifestInfo, Platform};
pub use media::{media_types, AcceptList};
pub use name::{NameError, Reference, RepoName, Tag};
pub use pattern::{glob, host_matches, repo_pattern_matches, ImagePattern, PatternError};
pub use range::{ByteRange, RangeError, RangeSpec};
pub use registry::{canonical_host, is_docker_hub, DOCKER_HUB};
pub use upstream::{PullScope, UpstreamId, UpstreamIdError};

/// Largest manifest the mirror fetches or serves. Matches Distribution's limit.
pub const MANIFEST_SIZE_LIMIT: usize = 4 * 1024 * 1024;
