//! What the backend suite needs of each backend beyond the trait: a way to see what an
//! upload left behind, and to leave an orphan as a crash would.

use std::future::Future;
use std::path::PathBuf;

use pullgate_oci::Digest;
use pullgate_store::{Backend, Filesystem, Store};

pub trait Fixture {
    type B: Backend;
    fn backend(&self) -> &Self::B;
    /// Large enough to take several parts where a backend writes in parts.
    fn big_size(&self) -> usize;
    /// Unfinished uploads (tmp files, pending multipart uploads) now.
    fn leftovers(&self) -> impl Future<Output = usize>;
    /// Leave an unfinished upload for `d`, as a process killed mid-fill does.
    fn make_orphan(&self, d: &Digest) -> impl Future<Output = ()>;
}

pub struct FsFixture {
    dir: tempfile::TempDir,
    backend: Filesystem,
    _store: Store,
}

impl FsFixture {
    pub fn new() -> FsFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open store");
        FsFixture {
            backend: store.filesystem(),
            _store: store,
            dir,
        }
    }

    fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }
}

impl Fixture for FsFixture {
    type B = Filesystem;

    fn backend(&self) -> &Filesystem {
        &self.backend
    }

    fn big_size(&self) -> usize {
        12 << 20
    }

    async fn leftovers(&self) -> usize {
        std::fs::read_dir(self.tmp()).expect("tmp/").count()
    }

    async fn make_orphan(&self, d: &Digest) {
        std::fs::write(
            self.tmp().join(format!("{}-crashed", &d.hex()[..16])),
            b"partial",
        )
        .expect("orphan");
    }
}

pub mod seaweed;

pub struct S3Fixture {
    /// Kept for its drop, which stops the server.
    _weed: seaweed::Seaweed,
    pub config: pullgate_store::S3Config,
    backend: pullgate_store::S3,
    raw: object_store::aws::AmazonS3,
}

impl S3Fixture {
    /// A SeaweedFS, and our backend on a prefix of its own in the bucket, once the bucket
    /// answers.
    pub async fn new(prefix: &str) -> S3Fixture {
        let weed = tokio::task::spawn_blocking(seaweed::Seaweed::start)
            .await
            .expect("start weed");
        let mut config = pullgate_store::S3Config::new(seaweed::BUCKET, "us-east-1");
        config.endpoint = Some(weed.endpoint());
        config.path_style = true;
        config.prefix = prefix.into();
        config.credentials = Some(weed.credentials_dir());
        config.part_size = pullgate_store::s3::MIN_PART_SIZE;
        config.parts_in_flight = 2;
        let backend = pullgate_store::S3::connect(&config).expect("connect");
        // Not yet `S3::open`: the gateway may not answer yet (see below).
        let raw = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(seaweed::BUCKET)
            .with_region("us-east-1")
            .with_endpoint(weed.endpoint())
            .with_allow_http(true)
            .with_access_key_id(seaweed::ACCESS_KEY)
            .with_secret_access_key(seaweed::SECRET_KEY)
            .build()
            .expect("raw client");
        // The gateway opens its port before the bucket made at start-up is there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match pullgate_store::S3::open(&config).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "bucket never answered: {e}\n{}",
                        weed.log()
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
        S3Fixture {
            _weed: weed,
            config,
            backend,
            raw,
        }
    }
}

impl Fixture for S3Fixture {
    type B = pullgate_store::S3;

    fn backend(&self) -> &pullgate_store::S3 {
        &self.backend
    }

    fn big_size(&self) -> usize {
        // Two whole parts and a short last one.
        2 * pullgate_store::s3::MIN_PART_SIZE + 12345
    }

    async fn leftovers(&self) -> usize {
        self.backend
            .unfinished_uploads()
            .await
            .expect("list uploads")
    }

    async fn make_orphan(&self, d: &Digest) {
        use object_store::multipart::MultipartStore;
        let key = object_store::path::Path::from(format!(
            "{}blobs/{}/{}",
            self.config.prefix,
            d.algorithm().as_str(),
            d.hex()
        ));
        let id = self
            .raw
            .create_multipart(&key)
            .await
            .expect("create multipart");
        self.raw
            .put_part(&key, &id, 0, bytes::Bytes::from_static(b"partial").into())
            .await
            .expect("put part");
    }
}
