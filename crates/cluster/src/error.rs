use std::path::PathBuf;

/// What can go wrong reading the cluster's configuration values and its shared key.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{text:?} is not a peer address: {why} (expected host:port, e.g. \"10.0.0.1:5001\")")]
    Peer { text: String, why: &'static str },
    #[error("{text:?} is not a DNS name with a port: {why} (expected e.g. \"pullgate-peers.pullgate.svc.cluster.local:5001\")")]
    Service { text: String, why: &'static str },
    // The path only: the error never carries a byte of the file.
    #[error("reading the cluster key {}: {source}", path.display())]
    KeyRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the cluster key {} is shorter than {min} bytes", path.display())]
    KeyTooShort { path: PathBuf, min: usize },
}
