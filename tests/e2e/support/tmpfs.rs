//! A small filesystem of its own for a cache: a tmpfs of a fixed size (to fill up), parts
//! of which can be made read-only and writable again. Needs root, as the rest of the suite does.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (`"4m"`) at `path`, creating it.
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        Tmpfs::mount_with(path, &format!("size={size}"))
    }

    /// Mount a tmpfs with these mount options (`"size=64m,nr_inodes=64"`).
    pub fn mount_with(path: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        mount(&["-t", "tmpfs", "-o", options, "tmpfs"], path);
        Tmpfs {
            path: path.to_owned(),
        }
    }

    /// Inodes free for new files and directories.
    pub fn free_inodes(&self) -> u64 {
        self.statvfs().f_favail
    }

    /// Bytes free for new files, as the cache sees them.
    pub fn free_bytes(&self) -> u64 {
        let st = self.statvfs();
        st.f_bavail * st.f_frsize
    }

    fn statvfs(&self) -> libc::statvfs {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.path.as_os_str().as_bytes()).expect("path");
        // SAFETY: statvfs fills the struct it is given; the path is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs {}", self.path.display());
        st
    }

    /// Make the directory `sub` read-only until the guard is dropped. A read-only bind
    /// mount over it: remounting the whole filesystem read-only is refused while files on
    /// it are open for writing, as the cache's index always is.
    pub fn read_only(&self, sub: &str) -> ReadOnly {
        let dir = self.path.join(sub);
        mount(&["--bind", &dir.to_string_lossy()], &dir);
        let guard = ReadOnly { dir };
        mount(&["-o", "remount,bind,ro"], &guard.dir);
        guard
    }
}

pub struct ReadOnly {
    dir: PathBuf,
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn mount(args: &[&str], path: &Path) {
    let out = Command::new("mount")
        .args(args)
        .arg(path)
        .output()
        .expect("running mount");
    assert!(
        out.status.success(),
        "mount {args:?} {} failed (the suite runs as root): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there must not leave the mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
