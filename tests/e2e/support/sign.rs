//! Real signatures for the trust tests. cosign 2.5 and oras 1.2 (Debian trixie's packages,
//! installed under target/trust-tools by tests/install-trust-tools.sh) sign, attest and attach
//! against a registry on loopback; openssl is a second, independent signer whose signature
//! manifests the harness pushes itself with [`Pusher`], so a test can craft what cosign never
//! would (a tampered payload, a payload naming another digest, a `.sig` with no valid layer).
//!
//! What lands on the registry (Distribution 2.8, which has no referrers API):
//! - [`Tools::sign`]: an OCI manifest tagged `sha256-<hex>.sig` (see [`sig_tag`]), one layer
//!   per signature, media type [`SIMPLE_SIGNING`], annotation [`SIGNATURE_ANNOTATION`] (base64
//!   signature), and with a certificate [`CERTIFICATE_ANNOTATION`] and [`CHAIN_ANNOTATION`].
//!   cosign appends a layer to an existing `.sig` manifest, so two signatures share one tag.
//! - [`Tools::attest`]: the same under `sha256-<hex>.att` ([`att_tag`]), layers of media type
//!   [`DSSE`] with annotation `predicateType` (and an empty signature annotation).
//! - With [`Sign::referrers`] or [`Attest::new_bundle`], a referrer instead: a manifest with a
//!   `subject`, which cosign (go-containerregistry) lists, as the registry has no referrers
//!   API, in the referrers tag-schema fallback: an OCI index tagged `sha256-<hex>`
//!   ([`referrers_tag`]). A signature referrer has config media type and index `artifactType`
//!   [`COSIGN_SIG_ARTIFACT`]; a bundle's manifest has `artifactType` [`BUNDLE_V03`] and one
//!   layer of that media type, but its entry in the fallback index says `artifactType`
//!   `application/vnd.oci.empty.v1+json` (go-containerregistry copies the config's media type).
//! - [`Tools::oras_attach`]: a referrer manifest with the given `artifactType`, listed in the
//!   same fallback index. [`Tools::attach_bundle`] attaches a bundle that way, e.g. the
//!   `messageSignature` bundle [`Tools::sign_blob_bundle`] makes over an image's manifest
//!   bytes (cosign 2.5's `sign` has no bundle output; `attest --new-bundle-format` makes the
//!   `dsseEnvelope` form).
//!
//! Every child process runs with a cleared environment in this object's temp dir: `HOME`,
//! `DOCKER_CONFIG` and `TUF_ROOT` there, a `COSIGN_PASSWORD`, no `COSIGN_*`/`SIGSTORE_*` from
//! the caller, and `HTTP(S)_PROXY` at a closed loopback port, so that whatever cosign would
//! fetch from the public-good sigstore (Rekor, Fulcio, the TUF root) fails at once on this
//! machine instead of leaving it (Go never proxies loopback, so the registry is reached).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::{json, Value};

use super::images::{sha256, Blob, Pusher};
use super::require;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
pub const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub const COSIGN_SIG_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
pub const VULN_PREDICATE: &str = "https://cosign.sigstore.dev/attestation/vuln/v1";
pub const SPDX_PREDICATE: &str = "https://spdx.dev/Document";
pub const CYCLONEDX_PREDICATE: &str = "https://cyclonedx.org/bom";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The cosign tag of the signatures of `digest`: `sha256-<hex>.sig`.
pub fn sig_tag(digest: &str) -> String {
    format!("{}.sig", referrers_tag(digest))
}

/// The cosign tag of the attestations of `digest`: `sha256-<hex>.att`.
pub fn att_tag(digest: &str) -> String {
    format!("{}.att", referrers_tag(digest))
}

/// The referrers tag-schema fallback's tag for `digest`: `sha256-<hex>`.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// A cosign key pair: `key` is cosign's encrypted private key (`COSIGN_PASSWORD` of the
/// [`Tools`] that made it), `public` an SPKI PEM public key.
#[derive(Clone)]
pub struct KeyPair {
    pub key: PathBuf,
    pub public: PathBuf,
}

impl KeyPair {
    pub fn public_pem(&self) -> String {
        std::fs::read_to_string(&self.public).expect("public key")
    }
}

/// A signing certificate issued by a [`Pki`] for a key, and the chain above it.
#[derive(Clone)]
pub struct SigningCert {
    pub cert: PathBuf,
    /// The intermediate, then the root (what `cosign sign --certificate-chain` wants).
    pub chain: PathBuf,
}

/// Options of [`Tools::sign_with`].
#[derive(Default, Clone)]
pub struct Sign<'a> {
    /// `--recursive`: an index's children are signed too.
    pub recursive: bool,
    /// `--certificate` and `--certificate-chain`.
    pub cert: Option<&'a SigningCert>,
    /// An OCI 1.1 referrer instead of the `.sig` tag (`COSIGN_EXPERIMENTAL=1`,
    /// `--registry-referrers-mode=oci-1-1`).
    pub referrers: bool,
    /// `-a key=value`: extra annotations in the signed payload's `optional`.
    pub annotations: Vec<(String, String)>,
}

/// Options of [`Tools::attest_with`].
#[derive(Default, Clone)]
pub struct Attest<'a> {
    /// `--new-bundle-format`: a sigstore bundle v0.3 (DSSE) as an OCI 1.1 referrer.
    pub new_bundle: bool,
    pub cert: Option<&'a SigningCert>,
    pub recursive: bool,
}

/// The signing tools, run in a temp dir of their own.
pub struct Tools {
    dir: tempfile::TempDir,
    password: String,
    /// `SSL_CERT_FILE` for the children, for a registry over TLS; without it registries are
    /// reached over plain HTTP (`--allow-http-registry`, `--plain-http`).
    ca: Option<PathBuf>,
    creds: Option<(String, String)>,
    /// `COSIGN_REPOSITORY`: signatures and attestations go to (and are read from) there.
    signature_repository: Option<String>,
    serial: std::sync::atomic::AtomicU32,
}

impl Default for Tools {
    fn default() -> Self {
        Tools::new()
    }
}

impl Tools {
    pub fn new() -> Tools {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in [".docker", ".sigstore/root", "keys", "work"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("tools dirs");
        }
        std::fs::write(dir.path().join(".docker/config.json"), "{\"auths\":{}}\n")
            .expect("docker config");
        Tools {
            dir,
            password: "e2e-cosign-password".to_owned(),
            ca: None,
            creds: None,
            signature_repository: None,
            serial: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Trust `ca` (PEM) for a registry over TLS: `SSL_CERT_FILE` of every child, oras's
    /// `--ca-file`. (Not exercised yet: the harness's Distribution serves plain HTTP.)
    #[allow(dead_code)]
    pub fn with_ca(mut self, ca: &Path) -> Tools {
        self.ca = Some(ca.to_owned());
        self
    }

    /// Basic credentials for the registry.
    pub fn with_creds(mut self, user: &str, password: &str) -> Tools {
        self.creds = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Signatures and attestations in `host/repo` instead of the image's repository
    /// (`COSIGN_REPOSITORY`).
    pub fn with_signature_repository(mut self, repo: &str) -> Tools {
        self.signature_repository = Some(repo.to_owned());
        self
    }

    /// A fresh path under the work dir.
    fn scratch(&self, name: &str) -> PathBuf {
        let n = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.path().join("work").join(format!("{n}-{name}"))
    }

    /// `tool` with a cleared environment that keeps it off the real home and the network.
    pub fn command(&self, tool: &str) -> Command {
        let home = self.dir.path();
        let mut cmd = Command::new(require(tool));
        cmd.env_clear()
            .current_dir(home)
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", home)
            .env("DOCKER_CONFIG", home.join(".docker"))
            .env("TUF_ROOT", home.join(".sigstore/root"))
            .env("COSIGN_PASSWORD", &self.password)
            // Nothing listens on port 9 here: any fetch off this machine fails at once.
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("https_proxy", "http://127.0.0.1:9")
            .env("http_proxy", "http://127.0.0.1:9");
        if let Some(ca) = &self.ca {
            cmd.env("SSL_CERT_FILE", ca);
        }
        if let Some(repo) = &self.signature_repository {
            cmd.env("COSIGN_REPOSITORY", repo);
        }
        cmd
    }

    /// Runs `tool args`; Ok(stdout and stderr) when it exits 0, else Err with both.
    pub fn run(&self, mut cmd: Command) -> Result<String, String> {
        let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("{:?} failed ({}):\n{text}", cmd, out.status))
        }
    }

    fn cosign(&self, args: &[&str]) -> Command {
        let mut cmd = self.command("cosign");
        cmd.args(args);
        cmd
    }

    /// The registry flags cosign's commands share.
    fn registry_flags(&self, cmd: &mut Command) {
        cmd.arg("--allow-http-registry=true");
        if let Some((u, p)) = &self.creds {
            cmd.arg(format!("--registry-username={u}"))
                .arg(format!("--registry-password={p}"));
        }
    }

    /// `cosign generate-key-pair`: an ECDSA P-256 key pair under the keys dir.
    pub fn generate_key_pair(&self, name: &str) -> KeyPair {
        let dir = self.dir.path().join("keys");
        let mut cmd = self.cosign(&["generate-key-pair", "--output-key-prefix", name]);
        cmd.current_dir(&dir);
        self.run(cmd).expect("cosign generate-key-pair");
        let pair = KeyPair {
            key: dir.join(format!("{name}.key")),
            public: dir.join(format!("{name}.pub")),
        };
        assert!(
            pair.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"),
            "cosign's public key is an SPKI PEM"
        );
        pair
    }

    /// `cosign sign --key` by digest (`reference` is `host/repo@sha256:…`), no transparency log.
    pub fn sign(&self, key: &KeyPair, reference: &str) -> Result<String, String> {
        self.sign_with(key, reference, &Sign::default())
    }

    pub fn sign_with(&self, key: &KeyPair, reference: &str, o: &Sign) -> Result<String, String> {
        assert!(
            reference.contains("@sha256:"),
            "sign by digest: {reference}"
        );
        let mut cmd = self.cosign(&["sign", "--tlog-upload=false", "--yes"]);
        cmd.arg("--key").arg(&key.key);
        self.registry_flags(&mut cmd);
        if o.recursive {
            cmd.arg("--recursive");
        }
        if let Some(c) = o.cert {
            cmd.arg("--certificate")
                .arg(&c.cert)
                .arg("--certificate-chain")
                .arg(&c.chain);
        }
        if o.referrers {
            cmd.env("COSIGN_EXPERIMENTAL", "1")
                .arg("--registry-referrers-mode=oci-1-1");
        }
        for (k, v) in &o.annotations {
            cmd.arg("-a").arg(format!("{k}={v}"));
        }
        cmd.arg(reference);
        self.run(cmd)
    }

    /// `cosign attest --key --type <predicate_type> --predicate <file>`, no transparency log.
    /// `predicate_type` is cosign's short name (`vuln`, `spdxjson`, `cyclonedx`, `custom`) or a
    /// URI.
    pub fn attest(
        &self,
        key: &KeyPair,
        reference: &str,
        predicate_type: &str,
        predicate: &Value,
    ) -> Result<String, String> {
        self.attest_with(
            key,
            reference,
            predicate_type,
            predicate,
            &Attest::default(),
        )
    }

    pub fn attest_with(
        &self,
        key: &KeyPair,
        reference: &str,
        predicate_type: &str,
        predicate: &Value,
        o: &Attest,
    ) -> Result<String, String> {
        assert!(
            reference.contains("@sha256:"),
            "attest by digest: {reference}"
        );
        let file = self.scratch("predicate.json");
        std::fs::write(&file, serde_json::to_vec_pretty(predicate).unwrap()).expect("predicate");
        let mut cmd = self.cosign(&["attest", "--tlog-upload=false", "--yes"]);
        cmd.arg("--key")
            .arg(&key.key)
            .arg("--type")
            .arg(predicate_type)
            .arg("--predicate")
            .arg(&file);
        self.registry_flags(&mut cmd);
        if o.new_bundle {
            cmd.arg("--new-bundle-format");
        }
        if o.recursive {
            cmd.arg("--recursive");
        }
        if let Some(c) = o.cert {
            cmd.arg("--certificate")
                .arg(&c.cert)
                .arg("--certificate-chain")
                .arg(&c.chain);
        }
        cmd.arg(reference);
        self.run(cmd)
    }

    /// A Trivy-style vuln attestation (`cosign attest --type vuln`) of `findings`, the scan
    /// finished at `finished_on` (RFC 3339).
    pub fn attest_vuln(
        &self,
        key: &KeyPair,
        reference: &str,
        findings: &[Finding],
        finished_on: &str,
    ) -> Result<String, String> {
        self.attest(
            key,
            reference,
            "vuln",
            &vuln_predicate(findings, finished_on),
        )
    }

    /// An SPDX SBOM attestation (`cosign attest --type spdxjson`).
    pub fn attest_sbom(&self, key: &KeyPair, reference: &str) -> Result<String, String> {
        self.attest(key, reference, "spdxjson", &spdx_predicate(reference))
    }

    /// A CycloneDX SBOM attestation (`cosign attest --type cyclonedx`).
    pub fn attest_cyclonedx(&self, key: &KeyPair, reference: &str) -> Result<String, String> {
        self.attest(key, reference, "cyclonedx", &cyclonedx_predicate(reference))
    }

    /// `cosign verify --key <public>` without the transparency log.
    pub fn verify(&self, public: &Path, reference: &str) -> Result<String, String> {
        let mut cmd = self.cosign(&["verify", "--insecure-ignore-tlog=true"]);
        cmd.arg("--key").arg(public);
        self.registry_flags(&mut cmd);
        cmd.arg(reference);
        self.run(cmd)
    }

    /// `cosign verify --experimental-oci11 --key`: reads signatures that are OCI 1.1 referrers
    /// ([`Sign::referrers`]); plain [`Tools::verify`] reads only the `.sig` tag.
    pub fn verify_referrers(&self, public: &Path, reference: &str) -> Result<String, String> {
        let mut cmd = self.cosign(&[
            "verify",
            "--insecure-ignore-tlog=true",
            "--experimental-oci11=true",
        ]);
        cmd.env("COSIGN_EXPERIMENTAL", "1").arg("--key").arg(public);
        self.registry_flags(&mut cmd);
        cmd.arg(reference);
        self.run(cmd)
    }

    /// `cosign verify` of a certificate signature against a private CA, offline: `roots` as
    /// `--ca-roots` (the intermediates come from the signature's chain annotation), the
    /// certificate's email SAN and its Fulcio issuer extension as the identity.
    pub fn verify_certificate(
        &self,
        reference: &str,
        roots: &Path,
        identity: &str,
        issuer: &str,
    ) -> Result<String, String> {
        let mut cmd = self.cosign(&[
            "verify",
            "--insecure-ignore-tlog=true",
            "--insecure-ignore-sct=true",
        ]);
        cmd.arg("--ca-roots")
            .arg(roots)
            .arg("--certificate-identity")
            .arg(identity)
            .arg("--certificate-oidc-issuer")
            .arg(issuer);
        self.registry_flags(&mut cmd);
        cmd.arg(reference);
        self.run(cmd)
    }

    /// `cosign verify --certificate-chain <chain>` (the chain is the only trust), offline.
    pub fn verify_certificate_chain(
        &self,
        reference: &str,
        chain: &Path,
        identity: &str,
        issuer: &str,
    ) -> Result<String, String> {
        let mut cmd = self.cosign(&[
            "verify",
            "--insecure-ignore-tlog=true",
            "--insecure-ignore-sct=true",
        ]);
        cmd.arg("--certificate-chain")
            .arg(chain)
            .arg("--certificate-identity")
            .arg(identity)
            .arg("--certificate-oidc-issuer")
            .arg(issuer);
        self.registry_flags(&mut cmd);
        cmd.arg(reference);
        self.run(cmd)
    }

    /// `cosign verify-attestation --key --type`. With `new_bundle` it reads bundle referrers,
    /// which needs a trusted root: an empty one (no Rekor, no Fulcio) keeps it offline.
    pub fn verify_attestation(
        &self,
        public: &Path,
        reference: &str,
        predicate_type: &str,
        new_bundle: bool,
    ) -> Result<String, String> {
        let mut cmd = self.cosign(&["verify-attestation", "--insecure-ignore-tlog=true"]);
        cmd.arg("--key")
            .arg(public)
            .arg("--type")
            .arg(predicate_type);
        if new_bundle {
            cmd.arg("--new-bundle-format")
                .arg("--trusted-root")
                .arg(self.empty_trusted_root());
        }
        self.registry_flags(&mut cmd);
        cmd.arg(reference);
        self.run(cmd)
    }

    /// `cosign sign-blob --new-bundle-format --bundle`: a sigstore bundle v0.3 whose
    /// `messageSignature` is over `message` (`messageDigest` is its SHA-256, base64). cosign 2.5
    /// makes this form for blobs only (`cosign sign` has no bundle output); signing an image's
    /// manifest bytes gives a bundle whose digest is the image's, which
    /// [`Tools::attach_bundle`] hangs on the image.
    pub fn sign_blob_bundle(&self, key: &KeyPair, message: &[u8]) -> Result<Value, String> {
        let file = self.scratch("message");
        let bundle = self.scratch("bundle.json");
        std::fs::write(&file, message).expect("message");
        let mut cmd = self.cosign(&[
            "sign-blob",
            "--tlog-upload=false",
            "--yes",
            "--new-bundle-format",
        ]);
        cmd.arg("--key")
            .arg(&key.key)
            .arg("--bundle")
            .arg(&bundle)
            .arg(&file);
        self.run(cmd)?;
        let bytes = std::fs::read(&bundle).map_err(|e| format!("reading the bundle: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("the bundle is not JSON: {e}"))
    }

    /// `cosign verify-blob --bundle --new-bundle-format` of `message`, offline (an empty
    /// trusted root, no transparency log).
    pub fn verify_blob_bundle(
        &self,
        public: &Path,
        bundle: &Value,
        message: &[u8],
    ) -> Result<String, String> {
        let file = self.scratch("message");
        let path = self.scratch("bundle.json");
        std::fs::write(&file, message).expect("message");
        std::fs::write(&path, serde_json::to_vec(bundle).unwrap()).expect("bundle");
        let mut cmd = self.cosign(&[
            "verify-blob",
            "--insecure-ignore-tlog=true",
            "--new-bundle-format",
        ]);
        cmd.arg("--key")
            .arg(public)
            .arg("--bundle")
            .arg(&path)
            .arg("--trusted-root")
            .arg(self.empty_trusted_root())
            .arg(&file);
        self.run(cmd)
    }

    /// Attaches `bundle` to `reference` as cosign lays a bundle referrer out: `artifactType`
    /// and the one layer's media type [`BUNDLE_V03`], manifest annotation `dev.sigstore.bundle.content`
    /// (`message-signature` or `dsse-envelope`, from the bundle). With oras: returns the
    /// referrer's digest.
    pub fn attach_bundle(&self, reference: &str, bundle: &Value) -> Result<String, String> {
        let content = if bundle.get("dsseEnvelope").is_some() {
            "dsse-envelope"
        } else {
            "message-signature"
        };
        self.oras_attach(
            reference,
            BUNDLE_V03,
            &serde_json::to_vec(bundle).unwrap(),
            BUNDLE_V03,
            &[("dev.sigstore.bundle.content", content)],
        )
    }

    /// A sigstore trusted root with no transparency log, CA or timestamp authority.
    pub fn empty_trusted_root(&self) -> PathBuf {
        let path = self.dir.path().join("trusted_root.json");
        std::fs::write(
            &path,
            "{\"mediaType\":\"application/vnd.dev.sigstore.trustedroot+json;version=0.1\"}\n",
        )
        .expect("trusted root");
        path
    }

    /// `oras attach --artifact-type <artifact_type> <reference> <file>:<media_type>`: a
    /// referrer of the subject `reference` (`host/repo@sha256:…`) with one layer holding
    /// `content`. Returns the referrer manifest's digest.
    pub fn oras_attach(
        &self,
        reference: &str,
        artifact_type: &str,
        content: &[u8],
        media_type: &str,
        annotations: &[(&str, &str)],
    ) -> Result<String, String> {
        let dir = self.scratch("oras");
        std::fs::create_dir_all(&dir).expect("oras dir");
        std::fs::write(dir.join("artifact"), content).expect("artifact");
        let mut cmd = self.command("oras");
        cmd.current_dir(&dir)
            .args(["attach", "--no-tty", "--artifact-type", artifact_type]);
        match &self.ca {
            None => cmd.arg("--plain-http"),
            Some(ca) => cmd.arg("--ca-file").arg(ca),
        };
        if let Some((u, p)) = &self.creds {
            cmd.args(["-u", u, "-p", p]);
        }
        for (k, v) in annotations {
            cmd.arg("-a").arg(format!("{k}={v}"));
        }
        cmd.arg("--format")
            .arg("json")
            .arg(reference)
            .arg(format!("artifact:{media_type}"));
        let out = self.run(cmd)?;
        let start = out
            .find('{')
            .ok_or_else(|| format!("no JSON from oras: {out}"))?;
        let v: Value = serde_json::Deserializer::from_str(&out[start..])
            .into_iter()
            .next()
            .ok_or_else(|| format!("no JSON from oras: {out}"))?
            .map_err(|e| format!("oras's JSON: {e}: {out}"))?;
        v["digest"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no digest in oras's output: {out}"))
    }

    /// A private PKI (root and intermediate CA) under this object's dir.
    pub fn pki(&self, name: &str) -> Pki {
        Pki::new(&self.dir.path().join("pki").join(name), name)
    }

    /// An openssl signer under this object's dir.
    pub fn openssl_key(&self, name: &str, alg: Algorithm) -> OpensslKey {
        OpensslKey::new(&self.dir.path().join("openssl"), name, alg)
    }
}

use super::tls::openssl;

/// A root CA and an intermediate below it, made with openssl (ECDSA P-256), that issue
/// code-signing certificates for cosign keys.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "root.key",
                "-out",
                "root.crt",
                "-days",
                "30",
                "-subj",
                &format!("/O=pullgate e2e/CN={name} root CA"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "intermediate.key",
                "-out",
                "intermediate.csr",
                "-subj",
                &format!("/O=pullgate e2e/CN={name} intermediate CA"),
            ],
        );
        std::fs::write(
            dir.join("intermediate.ext"),
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
        )
        .expect("ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "intermediate.csr",
                "-CA",
                "root.crt",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-out",
                "intermediate.crt",
                "-days",
                "30",
                "-extfile",
                "intermediate.ext",
            ],
        );
        let mut chain = std::fs::read(dir.join("intermediate.crt")).expect("intermediate");
        chain.extend(std::fs::read(dir.join("root.crt")).expect("root"));
        std::fs::write(dir.join("chain.pem"), chain).expect("chain");
        Pki {
            dir: dir.to_owned(),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root.crt")
    }

    /// The intermediate, then the root.
    pub fn chain(&self) -> PathBuf {
        self.dir.join("chain.pem")
    }

    /// A code-signing certificate for `key`'s public key (`openssl x509 -force_pubkey`: the
    /// leaf's key is the cosign signing key), issued by the intermediate, with the email SAN
    /// `email` and, if given, the OIDC issuer in Fulcio's extensions (1.3.6.1.4.1.57264.1.1,
    /// raw, and 1.3.6.1.4.1.57264.1.8, a UTF8String), which cosign's
    /// `--certificate-oidc-issuer` matches.
    ///
    /// (`cosign import-key-pair` of an openssl key would be the other way; Debian's cosign
    /// 2.5.0-2+b5 refuses every key with "error validating ecdsa key: unsupported public key
    /// type".)
    pub fn issue(
        &self,
        name: &str,
        key: &KeyPair,
        email: &str,
        issuer: Option<&str>,
    ) -> SigningCert {
        let d = &self.dir;
        let mut ext = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\nsubjectAltName=email:{email}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        );
        if let Some(iss) = issuer {
            ext.push_str(&format!(
                "1.3.6.1.4.1.57264.1.1=DER:{}\n1.3.6.1.4.1.57264.1.8=ASN1:UTF8String:{iss}\n",
                hex::encode(iss)
            ));
        }
        std::fs::write(d.join(format!("{name}.ext")), ext).expect("leaf ext");
        // The CSR's own key only signs the request; -force_pubkey puts the cosign key in.
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.csr.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/O=pullgate e2e/CN={name}"),
            ],
        );
        let public = key.public.display().to_string();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-force_pubkey",
                &public,
                "-CA",
                "intermediate.crt",
                "-CAkey",
                "intermediate.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "30",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
        SigningCert {
            cert: d.join(format!("{name}.crt")),
            chain: self.chain(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Ed25519,
}

/// A key made and used by openssl alone: the second, independent signer.
pub struct OpensslKey {
    pub key: PathBuf,
    /// SPKI PEM.
    pub public: PathBuf,
    pub alg: Algorithm,
    dir: PathBuf,
}

impl OpensslKey {
    pub fn new(dir: &Path, name: &str, alg: Algorithm) -> OpensslKey {
        std::fs::create_dir_all(dir).expect("openssl dir");
        let key = format!("{name}.key");
        let gen: &[&str] = match alg {
            Algorithm::EcdsaP256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Algorithm::EcdsaP384 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            Algorithm::Rsa2048 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Algorithm::Ed25519 => &["-algorithm", "ED25519"],
        };
        let mut args = vec!["genpkey"];
        args.extend_from_slice(gen);
        args.extend_from_slice(&["-out", &key]);
        openssl(dir, &args);
        let public = format!("{name}.pub");
        openssl(dir, &["pkey", "-in", &key, "-pubout", "-out", &public]);
        OpensslKey {
            key: dir.join(key),
            public: dir.join(public),
            alg,
            dir: dir.to_owned(),
        }
    }

    /// The base64 signature of `payload` as cosign writes it: ECDSA (DER) or RSA PKCS#1 v1.5
    /// over SHA-256 (`openssl dgst -sha256 -sign`), or plain Ed25519 (`openssl pkeyutl -rawin`).
    pub fn sign(&self, payload: &[u8]) -> String {
        let n = std::fs::read_dir(&self.dir).map(|d| d.count()).unwrap_or(0);
        let file = self.dir.join(format!("payload-{n}"));
        std::fs::write(&file, payload).expect("payload");
        let (key, file_s) = (self.key.display().to_string(), file.display().to_string());
        let sig = match self.alg {
            Algorithm::Ed25519 => openssl(
                &self.dir,
                &["pkeyutl", "-sign", "-rawin", "-inkey", &key, "-in", &file_s],
            ),
            _ => openssl(&self.dir, &["dgst", "-sha256", "-sign", &key, &file_s]),
        };
        base64::engine::general_purpose::STANDARD.encode(sig)
    }
}

/// cosign's simple-signing payload for `digest` under `docker_reference` (`host/repo`), byte
/// for byte as cosign writes it.
pub fn simple_signing_payload(docker_reference: &str, digest: &str) -> Vec<u8> {
    format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":{}}},\"image\":{{\"docker-manifest-digest\":{}}},\"type\":\"cosign container image signature\"}},\"optional\":null}}",
        Value::from(docker_reference),
        Value::from(digest)
    )
    .into_bytes()
}

/// One layer of a signature manifest.
#[derive(Clone)]
pub struct SigLayer {
    pub media_type: String,
    pub payload: Vec<u8>,
    pub annotations: Vec<(String, String)>,
}

impl SigLayer {
    /// A simple-signing layer with its base64 signature annotation.
    pub fn simple_signing(payload: Vec<u8>, signature: &str) -> SigLayer {
        SigLayer {
            media_type: SIMPLE_SIGNING.to_owned(),
            payload,
            annotations: vec![(SIGNATURE_ANNOTATION.to_owned(), signature.to_owned())],
        }
    }

    /// `payload` for `digest`, signed by `key`.
    pub fn signed_by(key: &OpensslKey, docker_reference: &str, digest: &str) -> SigLayer {
        let payload = simple_signing_payload(docker_reference, digest);
        let sig = key.sign(&payload);
        SigLayer::simple_signing(payload, &sig)
    }
}

/// A signature manifest as cosign lays it out: an OCI image manifest whose config is a
/// minimal image config over the layers, one layer per signature.
pub struct SignatureManifest {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
}

pub fn signature_manifest(layers: &[SigLayer]) -> SignatureManifest {
    let blobs: Vec<Blob> = layers
        .iter()
        .map(|l| Blob::new(&l.media_type, l.payload.clone()))
        .collect();
    let config = json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": blobs.iter().map(|b| &b.digest).collect::<Vec<_>>()},
        "config": {},
    });
    let config = Blob::new(
        "application/vnd.oci.image.config.v1+json",
        serde_json::to_vec(&config).unwrap(),
    );
    let descriptors: Vec<Value> = layers
        .iter()
        .zip(&blobs)
        .map(|(l, b)| {
            let annotations: serde_json::Map<String, Value> = l
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            let mut d =
                json!({"mediaType": b.media_type, "size": b.bytes.len(), "digest": b.digest});
            if !annotations.is_empty() {
                d["annotations"] = Value::Object(annotations);
            }
            d
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config.media_type, "size": config.bytes.len(), "digest": config.digest},
        "layers": descriptors,
    });
    SignatureManifest {
        config,
        layers: blobs,
        manifest: Blob::new(OCI_MANIFEST, serde_json::to_vec(&manifest).unwrap()),
    }
}

/// Pushes `layers` as the signatures of `subject` (a digest) in `repo`, tagged
/// `sha256-<hex>.sig` (replacing what the tag held). Returns the manifest's digest.
pub async fn push_signatures(
    pusher: &Pusher,
    repo: &str,
    subject: &str,
    layers: &[SigLayer],
) -> String {
    let m = signature_manifest(layers);
    pusher.blob(repo, &m.config).await;
    for b in &m.layers {
        pusher.blob(repo, b).await;
    }
    pusher.manifest(repo, &sig_tag(subject), &m.manifest).await;
    m.manifest.digest
}

/// One finding of a vulnerability scan.
#[derive(Clone, Debug)]
pub struct Finding {
    pub id: String,
    pub severity: String,
    pub package: String,
}

pub fn finding(id: &str, severity: &str, package: &str) -> Finding {
    Finding {
        id: id.to_owned(),
        severity: severity.to_owned(),
        package: package.to_owned(),
    }
}

/// A predicate in the shape of Trivy's `--format cosign-vuln`:
/// `scanner.result.Results[].Vulnerabilities[].{VulnerabilityID,Severity,PkgName}` and
/// `metadata.scanFinishedOn` (RFC 3339).
pub fn vuln_predicate(findings: &[Finding], finished_on: &str) -> Value {
    let vulns: Vec<Value> = findings
        .iter()
        .map(|f| {
            json!({
                "VulnerabilityID": f.id,
                "PkgName": f.package,
                "InstalledVersion": "1.0.0-1",
                "Severity": f.severity,
            })
        })
        .collect();
    json!({
        "invocation": {"parameters": null, "uri": "", "event_id": "", "builder.id": ""},
        "scanner": {
            "uri": "pkg:github/aquasecurity/trivy@v0.58.0",
            "version": "0.58.0",
            "db": {"uri": "", "version": ""},
            "result": {
                "SchemaVersion": 2,
                "ArtifactName": "e2e",
                "ArtifactType": "container_image",
                "Results": [{
                    "Target": "e2e (debian 12.8)",
                    "Class": "os-pkgs",
                    "Type": "debian",
                    "Vulnerabilities": vulns,
                }],
            },
        },
        "metadata": {"scanStartedOn": finished_on, "scanFinishedOn": finished_on},
    })
}

/// RFC 3339 (seconds, UTC) of `ago` before now, for `metadata.scanFinishedOn`.
pub fn rfc3339_ago(ago: std::time::Duration) -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now() - ago).to_string()
}

/// A minimal SPDX 2.3 document describing `name`.
pub fn spdx_predicate(name: &str) -> Value {
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": format!("https://pullgate.invalid/spdx/{}", sha256(name.as_bytes())),
        "creationInfo": {"created": "2026-01-01T00:00:00Z", "creators": ["Tool: pullgate-e2e"]},
        "packages": [{"SPDXID": "SPDXRef-Package-e2e", "name": "e2e", "downloadLocation": "NOASSERTION"}],
    })
}

/// A minimal CycloneDX 1.5 BOM describing `name`.
pub fn cyclonedx_predicate(name: &str) -> Value {
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {"component": {"type": "container", "name": name}},
        "components": [{"type": "library", "name": "e2e", "version": "1.0.0"}],
    })
}

/// The manifest (or index) `reference` of `repo` on the registry at `base_url`, if any.
/// (For a registry with Basic auth, put the credentials in the URL: `http://user:pass@…`.)
pub async fn fetch_manifest(base_url: &str, repo: &str, reference: &str) -> Option<Value> {
    let accept = format!(
        "{OCI_MANIFEST}, {OCI_INDEX}, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let r = super::http::request(
        "GET",
        &format!("{base_url}/v2/{repo}/manifests/{reference}"),
        &[("accept", &accept)],
    )
    .await;
    match r.status {
        200 => Some(serde_json::from_slice(r.bytes()).expect("a manifest is JSON")),
        404 => None,
        s => panic!("GET manifest {repo}:{reference}: {s}"),
    }
}

/// A blob's bytes.
pub async fn fetch_blob(base_url: &str, repo: &str, digest: &str) -> Vec<u8> {
    let r = super::http::get(&format!("{base_url}/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(r.status, 200, "GET blob {repo}@{digest}");
    r.bytes().to_vec()
}

/// The tags of `repo`.
pub async fn tags(base_url: &str, repo: &str) -> Vec<String> {
    let r = super::http::get(&format!("{base_url}/v2/{repo}/tags/list")).await;
    assert_eq!(r.status, 200, "tags of {repo}");
    let v: Value = serde_json::from_slice(r.bytes()).expect("tags JSON");
    v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
