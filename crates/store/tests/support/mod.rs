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
