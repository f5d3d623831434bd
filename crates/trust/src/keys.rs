//! Named public keys, CA bundles, and the [`KeySet`] that follows their mounted files.
//!
//! A key is a PEM `PUBLIC KEY` (SPKI, as `cosign generate-key-pair` and `openssl pkey -pubout`
//! write it): ECDSA P-256 (SHA-256) and P-384 (SHA-384) with ASN.1 DER signatures, as cosign
//! makes them, Ed25519, and RSA 2048–8192 with SHA-256, PKCS#1 v1.5 or PSS. ring verifies
//! them all from the SPKI's key bits.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, TryLockError};
use std::time::{Duration, Instant};

use ring::signature::{self, UnparsedPublicKey};
use rustls_pki_types::pem;

use crate::certs::CaBundle;
use crate::der::{tag, Reader};
use crate::error::{KeyError, LoadError};
use crate::policy::{CaConfig, KeyConfig};
use crate::watch;

/// How often [`KeySet::current`] looks at the files by default: a removed key stops
/// verifying within this interval of kubelet's swap.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Most keys one PEM file (or one configured path) may hold.
pub const MAX_KEYS_PER_NAME: usize = 64;

const KEY_EXTENSIONS: &[&str] = &[".pub", ".pem"];
const CA_EXTENSIONS: &[&str] = &[".crt", ".pem", ".cer"];

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The algorithms a [`PublicKey`] can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa,
}

/// SHA-256 of a key's SPKI DER: what "distinct keys" means for a threshold.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of_spki(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

/// One public key, ready to verify.
#[derive(Clone)]
pub struct PublicKey {
    algorithm: KeyAlgorithm,
    /// What ring takes: the SPKI's BIT STRING contents.
    key_bits: Arc<[u8]>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PublicKey({:?}, {})",
            self.algorithm,
            self.fingerprint.short()
        )
    }
}

impl PublicKey {
    /// A key from its DER `SubjectPublicKeyInfo`.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let mut outer = Reader::new(der);
        let spki = outer.take(tag::SEQUENCE).ok_or(KeyError::Malformed)?;
        if !outer.is_empty() {
            return Err(KeyError::Malformed);
        }
        let mut spki = Reader::new(spki);
        let mut alg = Reader::new(spki.take(tag::SEQUENCE).ok_or(KeyError::Malformed)?);
        let bits = spki.take(tag::BIT_STRING).ok_or(KeyError::Malformed)?;
        let oid = alg.take(tag::OID).ok_or(KeyError::Malformed)?;
        let algorithm = match oid {
            OID_EC_PUBLIC_KEY => match alg.take(tag::OID) {
                Some(OID_P256) => KeyAlgorithm::EcdsaP256,
                Some(OID_P384) => KeyAlgorithm::EcdsaP384,
                Some(curve) => {
                    return Err(KeyError::Unsupported(format!(
                        "EC curve {}",
                        crate::der::oid_to_string(curve).unwrap_or_default()
                    )))
                }
                None => return Err(KeyError::Malformed),
            },
            OID_ED25519 => KeyAlgorithm::Ed25519,
            OID_RSA => KeyAlgorithm::Rsa,
            other => {
                return Err(KeyError::Unsupported(
                    crate::der::oid_to_string(other).unwrap_or_else(|| "?".into()),
                ))
            }
        };
        let key_bits = match bits.split_first() {
            Some((0, key)) if !key.is_empty() => key,
            _ => return Err(KeyError::Malformed),
        };
        Ok(PublicKey {
            algorithm,
            key_bits: key_bits.into(),
            fingerprint: Fingerprint::of_spki(der),
        })
    }

    /// Every `PUBLIC KEY` block of a PEM file (at least one).
    pub fn from_pem(pem: &[u8]) -> Result<Vec<Self>, KeyError> {
        let mut keys = Vec::new();
        for item in pem::SliceIter::<(pem::SectionKind, Vec<u8>)>::new(pem) {
            let (kind, der) = item.map_err(|e| KeyError::Pem(e.to_string()))?;
            if kind == pem::SectionKind::PublicKey {
                if keys.len() == MAX_KEYS_PER_NAME {
                    return Err(KeyError::Pem(format!("more than {MAX_KEYS_PER_NAME} keys")));
                }
                keys.push(PublicKey::from_spki_der(&der)?);
            }
        }
        if keys.is_empty() {
            return Err(KeyError::NoPublicKey);
        }
        Ok(keys)
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Whether `signature` is this key's over `message`. ECDSA signatures are ASN.1 DER;
    /// RSA signatures may be PKCS#1 v1.5 or PSS.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let algs: &[&'static dyn signature::VerificationAlgorithm] = match self.algorithm {
            KeyAlgorithm::EcdsaP256 => &[&signature::ECDSA_P256_SHA256_ASN1],
            KeyAlgorithm::EcdsaP384 => &[&signature::ECDSA_P384_SHA384_ASN1],
            KeyAlgorithm::Ed25519 => &[&signature::ED25519],
            KeyAlgorithm::Rsa => &[
                &signature::RSA_PKCS1_2048_8192_SHA256,
                &signature::RSA_PSS_2048_8192_SHA256,
            ],
        };
        algs.iter().any(|alg| {
            UnparsedPublicKey::new(*alg, &self.key_bits[..])
                .verify(message, signature)
                .is_ok()
        })
    }
}

/// A snapshot of every configured key and CA, as [`evaluate`](crate::evaluate) reads them.
/// Immutable: a reload makes a new one with a new [`generation`](Keys::generation).
#[derive(Debug, Clone, Default)]
pub struct Keys {
    generation: u64,
    keys: BTreeMap<String, Vec<PublicKey>>,
    cas: BTreeMap<String, CaBundle>,
}

impl Keys {
    /// An empty set at `generation`, to build on with [`with_key`](Self::with_key) and
    /// [`with_ca`](Self::with_ca) (tests, benches, `policy check`).
    pub fn new(generation: u64) -> Self {
        Keys {
            generation,
            ..Keys::default()
        }
    }

    pub fn with_key(mut self, name: &str, key: PublicKey) -> Self {
        self.keys.entry(name.to_owned()).or_default().push(key);
        self
    }

    pub fn with_ca(mut self, name: &str, ca: CaBundle) -> Self {
        self.cas.insert(name.to_owned(), ca);
        self
    }

    /// Changes whenever any key or CA changes; verdict caches key on it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The keys loaded under `name` (empty if none, e.g. its file disappeared).
    pub fn keys(&self, name: &str) -> &[PublicKey] {
        self.keys.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn ca(&self, name: &str) -> Option<&CaBundle> {
        self.cas.get(name)
    }

    /// (name, fingerprints) of every key name, for `check-config`.
    pub fn key_summary(&self) -> impl Iterator<Item = (&str, Vec<Fingerprint>)> {
        self.keys
            .iter()
            .map(|(name, keys)| (name.as_str(), keys.iter().map(|k| k.fingerprint).collect()))
    }

    /// (name, number of CA certificates) of every CA name, for `check-config`.
    pub fn ca_summary(&self) -> impl Iterator<Item = (&str, usize)> {
        self.cas.iter().map(|(name, ca)| (name.as_str(), ca.len()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Key,
    Ca,
}

#[derive(Debug, Clone)]
struct Source {
    name: String,
    kind: Kind,
    path: PathBuf,
}

/// What a source loaded, with the stamps of what was read.
type Loaded = (Material, Vec<watch::Stamp>);
/// Why it did not, with the stamps of what was read if it got that far.
type LoadFailure = (Option<Vec<watch::Stamp>>, LoadError);

#[derive(Clone)]
enum Material {
    Keys(Vec<PublicKey>),
    Ca(CaBundle),
    /// The path is gone: its keys stop verifying (a key removed from a mount must).
    Gone,
}

impl Source {
    fn extensions(&self) -> &'static [&'static str] {
        match self.kind {
            Kind::Key => KEY_EXTENSIONS,
            Kind::Ca => CA_EXTENSIONS,
        }
    }

    fn load(&self) -> Result<Loaded, LoadFailure> {
        let (files, stamps) =
            watch::read_all(&self.path, self.extensions()).map_err(|e| (None, e))?;
        let material = match self.kind {
            Kind::Key => {
                let mut keys = Vec::new();
                for (path, bytes) in &files {
                    let parsed = PublicKey::from_pem(bytes).map_err(|source| {
                        (
                            Some(stamps.clone()),
                            LoadError::Key {
                                path: path.clone(),
                                source,
                            },
                        )
                    })?;
                    keys.extend(parsed);
                }
                keys.truncate(MAX_KEYS_PER_NAME);
                Material::Keys(keys)
            }
            Kind::Ca => {
                let mut pem = Vec::new();
                for (path, bytes) in &files {
                    // Each file must hold certificates on its own.
                    CaBundle::from_pem(bytes).map_err(|source| {
                        (
                            Some(stamps.clone()),
                            LoadError::Cert {
                                path: path.clone(),
                                source,
                            },
                        )
                    })?;
                    pem.extend_from_slice(bytes);
                    pem.push(b'\n');
                }
                let bundle = CaBundle::from_pem(&pem).map_err(|source| {
                    (
                        Some(stamps.clone()),
                        LoadError::Cert {
                            path: self.path.clone(),
                            source,
                        },
                    )
                })?;
                Material::Ca(bundle)
            }
        };
        Ok((material, stamps))
    }
}

/// The configured keys and CAs, reloaded when their mounted files change, like client
/// secrets: a check at most once per interval (stat only), a changed file re-read, a broken
/// version (unreadable, not PEM, an unsupported key) keeps that name's last good material
/// and counts one reload failure, and a path that disappears takes its keys away.
///
/// Cloning is cheap and clones share everything.
#[derive(Clone)]
pub struct KeySet {
    inner: Arc<Inner>,
    check_interval: Duration,
}

struct Inner {
    sources: Vec<Source>,
    current: RwLock<Arc<Keys>>,
    watch: Mutex<Watch>,
    reload_failures: AtomicU64,
}

struct Watch {
    last_check: Instant,
    /// Per source: what the last attempt looked at, good or bad (`None`: not found).
    seen: Vec<Option<Vec<watch::Stamp>>>,
    material: Vec<Material>,
}

impl KeySet {
    /// Loads every configured key and CA. Fails if any does not load: a policy that names a
    /// key it cannot read would deny (or, worse, be edited to allow) everything later.
    pub fn open(keys: &[KeyConfig], cas: &[CaConfig]) -> Result<KeySet, LoadError> {
        let sources: Vec<Source> = keys
            .iter()
            .map(|k| Source {
                name: k.name.clone(),
                kind: Kind::Key,
                path: k.path.clone(),
            })
            .chain(cas.iter().map(|c| Source {
                name: c.name.clone(),
                kind: Kind::Ca,
                path: c.path.clone(),
            }))
            .collect();
        let mut seen = Vec::new();
        let mut material = Vec::new();
        for source in &sources {
            let (m, stamps) = source.load().map_err(|(_, e)| e)?;
            seen.push(Some(stamps));
            material.push(m);
        }
        let keys = snapshot(&sources, &material, 1);
        Ok(KeySet {
            inner: Arc::new(Inner {
                sources,
                current: RwLock::new(Arc::new(keys)),
                watch: Mutex::new(Watch {
                    last_check: Instant::now(),
                    seen,
                    material,
                }),
                reload_failures: AtomicU64::new(0),
            }),
            check_interval: DEFAULT_CHECK_INTERVAL,
        })
    }

    /// Sets how often [`current`](Self::current) may look at the files (default
    /// [`DEFAULT_CHECK_INTERVAL`]); `Duration::ZERO` checks on every call.
    pub fn with_check_interval(mut self, interval: Duration) -> KeySet {
        self.check_interval = interval;
        self
    }

    /// The current keys and CAs, reloaded first if the interval has passed and a file has
    /// changed. This is the only call here that touches the disk.
    pub fn current(&self) -> Arc<Keys> {
        self.check();
        let current = match self.inner.current.read() {
            Ok(current) => current,
            // Writers only swap an Arc, so a poisoned lock still holds a whole set.
            Err(poisoned) => poisoned.into_inner(),
        };
        Arc::clone(&current)
    }

    /// How many reloads have failed since [`open`](Self::open); each bad version counts once.
    pub fn reload_failures(&self) -> u64 {
        self.inner.reload_failures.load(Ordering::Relaxed)
    }

    fn check(&self) {
        let mut watch = match self.inner.watch.try_lock() {
            Ok(watch) => watch,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Someone else is checking right now; use what is loaded.
            Err(TryLockError::WouldBlock) => return,
        };
        if watch.last_check.elapsed() < self.check_interval {
            return;
        }
        watch.last_check = Instant::now();
        let mut changed = false;
        for (i, source) in self.inner.sources.iter().enumerate() {
            let probed = match watch::probe(&source.path, source.extensions()) {
                Ok(stamps) => stamps,
                Err(error) => {
                    if watch.seen[i].take().is_some() {
                        self.record_failure(source, &error);
                        // Gone is not broken: whoever removed a key wants it to stop working.
                        if matches!(error, LoadError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound)
                        {
                            watch.material[i] = Material::Gone;
                            changed = true;
                        }
                    }
                    continue;
                }
            };
            if watch.seen[i].as_ref() == Some(&probed) {
                continue;
            }
            match source.load() {
                Ok((material, stamps)) => {
                    tracing::info!(
                        name = %source.name,
                        path = %source.path.display(),
                        "reloaded trust material"
                    );
                    watch.material[i] = material;
                    watch.seen[i] = Some(stamps);
                    changed = true;
                }
                Err((stamps, error)) => {
                    self.record_failure(source, &error);
                    watch.seen[i] = Some(stamps.unwrap_or(probed));
                }
            }
        }
        if changed {
            let generation = self.current_generation() + 1;
            let keys = Arc::new(snapshot(&self.inner.sources, &watch.material, generation));
            match self.inner.current.write() {
                Ok(mut current) => *current = keys,
                Err(poisoned) => *poisoned.into_inner() = keys,
            }
        }
    }

    fn current_generation(&self) -> u64 {
        match self.inner.current.read() {
            Ok(current) => current.generation,
            Err(poisoned) => poisoned.into_inner().generation,
        }
    }

    fn record_failure(&self, source: &Source, error: &LoadError) {
        self.inner.reload_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            name = %source.name,
            path = %source.path.display(),
            error = %watch::chain(error),
            "cannot reload trust material; keeping the last good version"
        );
    }
}

fn snapshot(sources: &[Source], material: &[Material], generation: u64) -> Keys {
    let mut keys = Keys::new(generation);
    for (source, material) in sources.iter().zip(material) {
        match material {
            Material::Keys(list) => {
                keys.keys.insert(source.name.clone(), list.clone());
            }
            Material::Ca(ca) => {
                keys.cas.insert(source.name.clone(), ca.clone());
            }
            Material::Gone => {}
        }
    }
    keys
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::*;
    use std::fs;
    use std::path::Path;

    #[test]
    fn parses_and_verifies_each_algorithm() {
        let rng = ring::rand::SystemRandom::new();
        let message = b"payload";
        for signer in [Signer::p256(&rng), Signer::ed25519(&rng)] {
            let key = PublicKey::from_pem(signer.public_pem().as_bytes()).unwrap();
            assert_eq!(key.len(), 1);
            let sig = signer.sign(message);
            assert!(key[0].verify(message, &sig), "{:?}", key[0].algorithm());
            assert!(!key[0].verify(b"other", &sig));
            let other = Signer::p256(&rng);
            assert!(!key[0].verify(message, &other.sign(message)));
        }
    }

    #[test]
    fn openssl_keys_of_every_kind() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "p256",
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ][..],
                KeyAlgorithm::EcdsaP256,
            ),
            (
                "p384",
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-384",
                ][..],
                KeyAlgorithm::EcdsaP384,
            ),
            (
                "ed",
                &["genpkey", "-algorithm", "ED25519"][..],
                KeyAlgorithm::Ed25519,
            ),
            (
                "rsa",
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ][..],
                KeyAlgorithm::Rsa,
            ),
        ];
        let payload = dir.path().join("payload");
        fs::write(&payload, b"signed by openssl").unwrap();
        for (name, genargs, algorithm) in cases {
            let key = OpensslKey::generate(dir.path(), name, genargs);
            let public = PublicKey::from_pem(&fs::read(key.public()).unwrap()).unwrap();
            assert_eq!(public[0].algorithm(), algorithm, "{name}");
            let sig = key.sign(&payload);
            assert!(public[0].verify(b"signed by openssl", &sig), "{name}");
            assert!(!public[0].verify(b"signed by openssl!", &sig), "{name}");
            if algorithm == KeyAlgorithm::Rsa {
                let pss = key.sign_pss(&payload);
                assert!(public[0].verify(b"signed by openssl", &pss));
            }
        }
    }

    #[test]
    fn refuses_what_is_not_a_usable_key() {
        let rng = ring::rand::SystemRandom::new();
        let good = Signer::p256(&rng).spki();
        type Check = fn(&KeyError) -> bool;
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (b"not pem at all".to_vec(), |e| {
                matches!(e, KeyError::NoPublicKey)
            }),
            (pem_encode("CERTIFICATE", &good).into_bytes(), |e| {
                matches!(e, KeyError::NoPublicKey)
            }),
            (
                pem_encode("PUBLIC KEY", &good[..good.len() - 1]).into_bytes(),
                |e| matches!(e, KeyError::Malformed),
            ),
            (
                // A P-256 SPKI whose curve is secp256k1.
                pem_encode("PUBLIC KEY", &{
                    let mut k = good.clone();
                    k[15..23].copy_from_slice(&[0x2b, 0x81, 0x04, 0x00, 0x0a, 0x05, 0x00, 0x00]);
                    k
                })
                .into_bytes(),
                |e| matches!(e, KeyError::Malformed | KeyError::Unsupported(_)),
            ),
        ];
        for (input, expected) in cases {
            let err = PublicKey::from_pem(&input).unwrap_err();
            assert!(expected(&err), "{err:?}");
        }
    }

    fn key_config(name: &str, path: &Path) -> KeyConfig {
        KeyConfig {
            name: name.into(),
            path: path.to_path_buf(),
        }
    }

    #[test]
    fn follows_a_kubelet_volume_through_rotation() {
        let rng = ring::rand::SystemRandom::new();
        let (first, second) = (Signer::p256(&rng), Signer::ed25519(&rng));
        let mut volume = Volume::new(&[("release.pub", first.public_pem())]);
        let set = KeySet::open(&[key_config("release", volume.path())], &[])
            .unwrap()
            .with_check_interval(Duration::ZERO);
        let keys = set.current();
        let generation = keys.generation();
        assert_eq!(keys.keys("release")[0].fingerprint(), first.fingerprint());

        // Replaced: the old key is refused from the next check on.
        volume.rotate(&[("release.pub", second.public_pem())]);
        let keys = set.current();
        assert_ne!(keys.generation(), generation);
        assert_eq!(keys.keys("release").len(), 1);
        assert_eq!(keys.keys("release")[0].fingerprint(), second.fingerprint());

        // Broken: the last good set stays, counted once.
        let generation = keys.generation();
        volume.rotate(&[(
            "release.pub",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
        )]);
        assert_eq!(
            set.current().keys("release")[0].fingerprint(),
            second.fingerprint()
        );
        assert_eq!(set.current().generation(), generation);
        assert_eq!(set.reload_failures(), 1);

        // Two keys in the secret, then one removed.
        volume.rotate(&[
            ("a.pub", first.public_pem()),
            ("b.pub", second.public_pem()),
        ]);
        assert_eq!(set.current().keys("release").len(), 2);
        volume.rotate(&[("b.pub", second.public_pem())]);
        let keys = set.current();
        assert_eq!(keys.keys("release").len(), 1);
        assert_eq!(keys.keys("release")[0].fingerprint(), second.fingerprint());
        assert_eq!(set.reload_failures(), 1);
    }

    #[test]
    fn a_removed_key_file_stops_verifying_and_the_interval_is_kept() {
        let rng = ring::rand::SystemRandom::new();
        let signer = Signer::p256(&rng);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("release.pub");
        fs::write(&file, signer.public_pem()).unwrap();
        let slow = KeySet::open(&[key_config("release", &file)], &[])
            .unwrap()
            .with_check_interval(Duration::from_secs(3600));
        let set = slow.clone().with_check_interval(Duration::ZERO);
        fs::remove_file(&file).unwrap();
        assert_eq!(slow.current().keys("release").len(), 1);
        assert!(set.current().keys("release").is_empty());
        assert_eq!(set.reload_failures(), 1);
        fs::write(&file, signer.public_pem()).unwrap();
        assert_eq!(set.current().keys("release").len(), 1);
    }

    #[test]
    fn the_default_interval_sees_a_rotation_within_five_seconds() {
        let rng = ring::rand::SystemRandom::new();
        let (first, second) = (Signer::p256(&rng), Signer::p256(&rng));
        let mut volume = Volume::new(&[("release.pub", first.public_pem())]);
        let set = KeySet::open(&[key_config("release", volume.path())], &[]).unwrap();
        volume.rotate(&[("release.pub", second.public_pem())]);
        let start = Instant::now();
        while set.current().keys("release")[0].fingerprint() != second.fingerprint() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "rotation not seen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn open_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.pub");
        assert!(matches!(
            KeySet::open(&[key_config("k", &file)], &[]),
            Err(LoadError::Io { .. })
        ));
        fs::write(&file, "garbage").unwrap();
        assert!(matches!(
            KeySet::open(&[key_config("k", &file)], &[]),
            Err(LoadError::Key {
                source: KeyError::NoPublicKey,
                ..
            })
        ));
    }
}
