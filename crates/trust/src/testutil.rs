//! Test helpers: keys and signatures made in-process with ring, and by an independent
//! signer (openssl, run at test time into a temp dir, so no binary fixture is committed);
//! a private PKI made with `openssl req`/`x509`; kubelet's secret-volume layout.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};

use crate::keys::{Fingerprint, PublicKey};

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A key pair made by ring.
pub enum Signer {
    P256(EcdsaKeyPair, SystemRandom),
    Ed25519(Ed25519KeyPair),
}

impl Signer {
    pub fn p256(rng: &SystemRandom) -> Signer {
        let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, rng).unwrap();
        Signer::P256(
            EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), rng).unwrap(),
            rng.clone(),
        )
    }

    pub fn ed25519(rng: &SystemRandom) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(rng).unwrap();
        Signer::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    pub fn spki(&self) -> Vec<u8> {
        match self {
            Signer::P256(pair, _) => {
                let mut der = vec![
                    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
                    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
                ];
                der.extend_from_slice(pair.public_key().as_ref());
                der
            }
            Signer::Ed25519(pair) => {
                let mut der = vec![
                    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
                ];
                der.extend_from_slice(pair.public_key().as_ref());
                der
            }
        }
    }

    pub fn public_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.spki())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_spki_der(&self.spki()).unwrap()
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_spki(&self.spki())
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Signer::P256(pair, rng) => pair.sign(rng, message).unwrap().as_ref().to_vec(),
            Signer::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
        }
    }
}

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A key generated and used by openssl: the independent signer.
pub struct OpensslKey {
    dir: PathBuf,
    name: String,
    raw_sign: bool,
    digest: &'static str,
}

impl OpensslKey {
    pub fn generate(dir: &Path, name: &str, genpkey_args: &[&str]) -> OpensslKey {
        let key = format!("{name}.key");
        let mut args = genpkey_args.to_vec();
        args.extend(["-out", &key]);
        openssl(&args, dir);
        let public = format!("{name}.pub");
        openssl(&["pkey", "-in", &key, "-pubout", "-out", &public], dir);
        let text = fs::read_to_string(dir.join(&public)).unwrap();
        OpensslKey {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            raw_sign: genpkey_args.contains(&"ED25519"),
            digest: if genpkey_args.contains(&"ec_paramgen_curve:P-384") {
                "-sha384"
            } else {
                "-sha256"
            },
        }
        .check(&text)
    }

    fn check(self, public_pem: &str) -> Self {
        assert!(public_pem.contains("BEGIN PUBLIC KEY"));
        self
    }

    pub fn public(&self) -> PathBuf {
        self.dir.join(format!("{}.pub", self.name))
    }

    fn key(&self) -> String {
        format!("{}.key", self.name)
    }

    /// `openssl dgst -sha256 -sign` (ECDSA: ASN.1 DER, as cosign), or `pkeyutl -rawin` for
    /// Ed25519.
    pub fn sign(&self, payload: &Path) -> Vec<u8> {
        let payload = payload.to_str().unwrap();
        if self.raw_sign {
            openssl(
                &[
                    "pkeyutl",
                    "-sign",
                    "-rawin",
                    "-inkey",
                    &self.key(),
                    "-in",
                    payload,
                ],
                &self.dir,
            )
        } else {
            openssl(
                &["dgst", self.digest, "-sign", &self.key(), payload],
                &self.dir,
            )
        }
    }

    pub fn sign_bytes(&self, payload: &[u8]) -> Vec<u8> {
        let file = self.dir.join(format!("{}.payload", self.name));
        fs::write(&file, payload).unwrap();
        self.sign(&file)
    }

    pub fn sign_pss(&self, payload: &Path) -> Vec<u8> {
        openssl(
            &[
                "dgst",
                "-sha256",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
                "-sign",
                &self.key(),
                payload.to_str().unwrap(),
            ],
            &self.dir,
        )
    }
}

const EXTENSIONS: &str = "\
[ca]
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
[leaf]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=codeSigning
subjectAltName=email:release@example.com,URI:https://ci.example.com/release
[server]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=email:release@example.com
[noeku]
basicConstraints=critical,CA:FALSE
subjectAltName=email:release@example.com
[fulcio]
basicConstraints=critical,CA:FALSE
extendedKeyUsage=codeSigning
subjectAltName=URI:https://github.com/org/repo
1.3.6.1.4.1.57264.1.8=ASN1:UTF8String:https://token.actions.githubusercontent.com
";

/// A private PKI made by openssl: `root` → `intermediate` → `leaf` (code signing, email and
/// URI SANs, one day), `server` (server auth only), `fulcio_leaf` (the Fulcio issuer
/// extension), and an unrelated `other_root` → `other_leaf`.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("ext.cnf"), EXTENSIONS).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for (root, cn) in [("root", "/CN=Test Root"), ("other_root", "/CN=Other Root")] {
            let (key, crt) = (format!("{root}.key"), format!("{root}.crt"));
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend([
                "-keyout",
                &key,
                "-out",
                &crt,
                "-days",
                "2",
                "-subj",
                cn,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(&args, d);
        }
        let issue = |name: &str, subj: &str, ca: &str, ext: &str, days: &str, serial: &str| {
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let mut args = vec!["req", "-new"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", subj]);
            openssl(&args, d);
            let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
            openssl(
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_crt,
                    "-CAkey",
                    &ca_key,
                    "-set_serial",
                    serial,
                    "-days",
                    days,
                    "-extfile",
                    "ext.cnf",
                    "-extensions",
                    ext,
                    "-out",
                    &crt,
                ],
                d,
            );
        };
        issue(
            "intermediate",
            "/O=Test, Inc./CN=Test Intermediate",
            "root",
            "ca",
            "2",
            "2",
        );
        issue("leaf", "/CN=release", "intermediate", "leaf", "1", "3");
        issue("server", "/CN=server", "intermediate", "server", "1", "4");
        issue(
            "fulcio_leaf",
            "/CN=fulcio",
            "intermediate",
            "fulcio",
            "1",
            "5",
        );
        issue("no_eku", "/CN=no-eku", "intermediate", "noeku", "1", "7");
        issue("other_leaf", "/CN=release", "other_root", "leaf", "1", "6");
        Pki { dir }
    }

    pub fn pem(&self, name: &str) -> Vec<u8> {
        fs::read(self.dir.path().join(format!("{name}.crt"))).unwrap()
    }

    pub fn root_pem(&self) -> Vec<u8> {
        self.pem("root")
    }

    pub fn der(&self, name: &str) -> Vec<u8> {
        crate::certs::certs_from_pem(&self.pem(name), 1)
            .unwrap()
            .remove(0)
    }

    pub fn leaf_fingerprint(&self) -> Fingerprint {
        let spki = openssl(
            &["x509", "-in", "leaf.crt", "-noout", "-pubkey"],
            self.dir.path(),
        );
        PublicKey::from_pem(&spki).unwrap()[0].fingerprint()
    }

    /// `openssl dgst -sha256 -sign` with a certificate's key.
    pub fn sign(&self, name: &str, payload: &[u8]) -> Vec<u8> {
        let file = self.dir.path().join("payload");
        fs::write(&file, payload).unwrap();
        openssl(
            &[
                "dgst",
                "-sha256",
                "-sign",
                &format!("{name}.key"),
                "payload",
            ],
            self.dir.path(),
        )
    }
}

/// Kubelet's secret volume: `<dir>/..<timestamp>/<files>`, `..data` pointing at it, and
/// `<dir>/<file> -> ..data/<file>`; rotated by a new directory and a renamed symlink.
pub struct Volume {
    pub dir: tempfile::TempDir,
    generation: u32,
    files: Vec<String>,
}

impl Volume {
    pub fn new(files: &[(&str, String)]) -> Volume {
        let dir = tempfile::tempdir().unwrap();
        let mut volume = Volume {
            dir,
            generation: 0,
            files: Vec::new(),
        };
        let first = volume.write_generation(files);
        symlink(&first, volume.dir.path().join("..data")).unwrap();
        volume.link(files);
        volume
    }

    fn write_generation(&mut self, files: &[(&str, String)]) -> String {
        let name = format!("..2026_01_01_00_00_{:02}.000", self.generation);
        self.generation += 1;
        let generation = self.dir.path().join(&name);
        fs::create_dir(&generation).unwrap();
        for (file, contents) in files {
            fs::write(generation.join(file), contents).unwrap();
        }
        name
    }

    fn link(&mut self, files: &[(&str, String)]) {
        for old in self.files.drain(..) {
            fs::remove_file(self.dir.path().join(old)).unwrap();
        }
        for (file, _) in files {
            symlink(format!("..data/{file}"), self.dir.path().join(file)).unwrap();
            self.files.push((*file).to_owned());
        }
    }

    pub fn rotate(&mut self, files: &[(&str, String)]) {
        let old = fs::read_link(self.dir.path().join("..data")).unwrap();
        let name = self.write_generation(files);
        let tmp = self.dir.path().join("..data_tmp");
        symlink(&name, &tmp).unwrap();
        fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
        // Kubelet then fixes the top-level links for added and removed keys.
        if self
            .files
            .iter()
            .map(String::as_str)
            .ne(files.iter().map(|(f, _)| *f))
        {
            self.link(files);
        }
        fs::remove_dir_all(self.dir.path().join(old)).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
