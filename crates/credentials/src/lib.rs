//! Credentials for registries, as Kubernetes hands them to pods: dockerconfigjson secrets.
//!
//! What it is:
//! - [`DockerConfig`]: a parsed `.dockerconfigjson` (`{"auths": {...}}`) or legacy
//!   `.dockercfg` (a bare map of registry to entry), keyed by normalized registry host, with
//!   kubelet-like lookup by host ([`DockerConfig::for_host`]): Docker Hub's many names are one
//!   key (two entries under two of its names are two credentials, both kept), ports are
//!   kept, and a leading `*.` wildcard matches one label. An unusable entry is skipped and
//!   listed ([`SkippedEntry`]), never fatal: the rest of the file still applies.
//! - [`SecretSource`]: a file or mounted secret directory that is re-read when kubelet rotates
//!   it, keeping the last good set when a rotation brings something that is not a docker
//!   config at all; skipped entries are logged (key and reason only) and counted.
//! - [`Credential`]: a username/password pair whose `Debug` never shows the password.
//!
//! What it is not: no HTTP, no async, no credential helpers or identity tokens. Nothing here
//! decides who may pull what; `pullgate-auth` and `pullgate-upstream` build on these types.
//!
//! Secret values never appear in errors or logs: errors name the registry key and the file,
//! never the bytes of an entry.

mod config;
mod error;
mod source;

pub use config::{Credential, DockerConfig, Entry, SkippedEntry, MAX_CONFIG_SIZE};
pub use error::CredentialsError;
pub use source::{SecretSource, DEFAULT_CHECK_INTERVAL};
