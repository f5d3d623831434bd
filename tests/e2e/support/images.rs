//! Deterministic test images, built in memory (no internet): uncompressed tar layers of
//! pseudo-random bytes, OCI or Docker schema 2 manifests, multi-platform indexes; and a
//! pusher that uploads them to a registry over the distribution API.

use serde_json::json;
use sha2::{Digest as _, Sha256};

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Clone)]
pub struct Blob {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            digest: sha256(&bytes),
            media_type: media_type.to_owned(),
            bytes,
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flavor {
    Oci,
    Docker,
}

impl Flavor {
    pub fn manifest_type(self) -> &'static str {
        match self {
            Flavor::Oci => "application/vnd.oci.image.manifest.v1+json",
            Flavor::Docker => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }
    pub fn index_type(self) -> &'static str {
        match self {
            Flavor::Oci => "application/vnd.oci.image.index.v1+json",
            Flavor::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }
    fn config_type(self) -> &'static str {
        match self {
            Flavor::Oci => "application/vnd.oci.image.config.v1+json",
            Flavor::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }
    fn layer_type(self) -> &'static str {
        match self {
            Flavor::Oci => "application/vnd.oci.image.layer.v1.tar",
            Flavor::Docker => "application/vnd.docker.image.rootfs.diff.tar",
        }
    }
}

#[derive(Clone)]
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// The manifest; its `media_type` is the manifest's.
    pub manifest: Blob,
}

impl Image {
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }
}

pub struct Index {
    pub manifest: Blob,
    pub images: Vec<Image>,
}

/// Pseudo-random, incompressible, and the same on every run for the same seed.
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut x = u64::from_le_bytes(Sha256::digest(seed.as_bytes())[..8].try_into().unwrap()) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A ustar archive holding one regular file.
pub fn tar_with_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let field = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
        let s = format!("{:0w$o}\0", v, w = width - 1);
        h[at..at + width].copy_from_slice(s.as_bytes());
    };
    field(&mut h, 100, 8, 0o644);
    field(&mut h, 108, 8, 0);
    field(&mut h, 116, 8, 0);
    field(&mut h, 124, 12, content.len() as u64);
    field(&mut h, 136, 12, 1_700_000_000);
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());

    let mut out = Vec::with_capacity(content.len() + 2048);
    out.extend_from_slice(&h);
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// An image whose layers hold `layer_sizes` bytes of noise each.
pub fn image(seed: &str, layer_sizes: &[usize], flavor: Flavor, arch: &str) -> Image {
    let layers: Vec<Blob> = layer_sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let name = format!("{seed}-{arch}-{i}.bin");
            Blob::new(flavor.layer_type(), tar_with_file(&name, &noise(&name, n)))
        })
        .collect();
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Labels": {"e2e.seed": seed}},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.digest).collect::<Vec<_>>()},
    });
    let config = Blob::new(flavor.config_type(), serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": flavor.manifest_type(),
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    // Pretty-printed on purpose: a mirror that re-serialises would change the digest.
    let manifest = Blob::new(
        flavor.manifest_type(),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    );
    Image {
        config,
        layers,
        manifest,
    }
}

/// A multi-platform index (OCI) or manifest list (Docker) over linux/amd64 and linux/arm64.
pub fn index(seed: &str, layer_sizes: &[usize], flavor: Flavor) -> Index {
    let images: Vec<Image> = ["amd64", "arm64"]
        .iter()
        .map(|arch| image(seed, layer_sizes, flavor, arch))
        .collect();
    let manifests: Vec<_> = images
        .iter()
        .zip(["amd64", "arm64"])
        .map(|(img, arch)| {
            let mut d = img.manifest.descriptor();
            d["platform"] = json!({"architecture": arch, "os": "linux"});
            d
        })
        .collect();
    let doc = json!({"schemaVersion": 2, "mediaType": flavor.index_type(), "manifests": manifests});
    Index {
        manifest: Blob::new(
            flavor.index_type(),
            serde_json::to_vec_pretty(&doc).unwrap(),
        ),
        images,
    }
}

/// Uploads to a registry (monolithic blob uploads), optionally with Basic credentials.
pub struct Pusher {
    pub base: String,
    pub creds: Option<(String, String)>,
    client: reqwest::Client,
}

impl Pusher {
    pub fn new(base: &str, creds: Option<(String, String)>) -> Pusher {
        Pusher {
            base: base.trim_end_matches('/').to_owned(),
            creds,
            client: reqwest::Client::new(),
        }
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.creds {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    pub async fn blob(&self, repo: &str, blob: &Blob) {
        let head = self
            .auth(
                self.client
                    .head(format!("{}/v2/{repo}/blobs/{}", self.base, blob.digest)),
            )
            .send()
            .await
            .expect("HEAD blob");
        if head.status().is_success() {
            return;
        }
        let start = self
            .auth(
                self.client
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )
            .send()
            .await
            .expect("start upload");
        assert_eq!(start.status().as_u16(), 202, "starting an upload to {repo}");
        let location = start.headers()["location"].to_str().unwrap().to_owned();
        let mut url = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={}", blob.digest));
        let put = self
            .auth(self.client.put(url))
            .header("content-type", "application/octet-stream")
            .body(blob.bytes.clone())
            .send()
            .await
            .expect("PUT blob");
        assert_eq!(put.status().as_u16(), 201, "uploading {}", blob.digest);
    }

    pub async fn manifest(&self, repo: &str, reference: &str, m: &Blob) {
        let put = self
            .auth(
                self.client
                    .put(format!("{}/v2/{repo}/manifests/{reference}", self.base)),
            )
            .header("content-type", &m.media_type)
            .body(m.bytes.clone())
            .send()
            .await
            .expect("PUT manifest");
        let status = put.status().as_u16();
        let body = put.text().await.unwrap_or_default();
        assert_eq!(status, 201, "pushing manifest {repo}:{reference}: {body}");
    }

    pub async fn image(&self, repo: &str, tag: &str, img: &Image) {
        for b in img.blobs() {
            self.blob(repo, b).await;
        }
        self.manifest(repo, tag, &img.manifest).await;
    }

    pub async fn index(&self, repo: &str, tag: &str, idx: &Index) {
        for img in &idx.images {
            for b in img.blobs() {
                self.blob(repo, b).await;
            }
            self.manifest(repo, &img.manifest.digest, &img.manifest)
                .await;
        }
        self.manifest(repo, tag, &idx.manifest).await;
    }
}

/// sha256 over a stream of chunks.
#[derive(Default)]
pub struct StreamHash(Sha256);

impl StreamHash {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.0.finalize()))
    }
}
