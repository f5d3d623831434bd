//! CNCF Distribution (`docker-registry`) as a real upstream, anonymous or with htpasswd.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, require, wait_port};

pub enum Auth {
    Anonymous,
    /// htpasswd (bcrypt) with one user.
    Basic {
        user: String,
        password: String,
    },
}

pub struct Distribution {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub auth: Option<(String, String)>,
}

impl Distribution {
    pub fn start(auth: Auth) -> Distribution {
        Distribution::start_with(auth, "")
    }

    #[allow(dead_code)] // benches/e2e_proxy.rs compares pullgate with it
    /// Distribution in pull-through proxy mode in front of `remote` (its own mirror mode,
    /// for comparisons), optionally requiring Basic credentials of its clients.
    pub fn proxy(remote: &str, auth: Auth) -> Distribution {
        Distribution::start_with(auth, &format!("proxy:\n  remoteurl: {remote}\n"))
    }

    fn start_with(auth: Auth, extra: &str) -> Distribution {
        require("docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        let creds = match auth {
            Auth::Anonymous => None,
            Auth::Basic { user, password } => {
                require("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", &user, &password])
                    .output()
                    .expect("htpasswd");
                assert!(out.status.success(), "htpasswd failed");
                let file = dir.path().join("htpasswd");
                fs::write(&file, &out.stdout).expect("write htpasswd");
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: e2e-upstream\n    path: {}\n",
                    file.display()
                ));
                Some((user, password))
            }
        };
        config.push_str(extra);
        fs::write(dir.path().join("config.yml"), config).expect("write config");
        let mut d = Distribution {
            port,
            dir,
            child: None,
            auth: creds,
        };
        d.spawn();
        d
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn spawn(&mut self) {
        let log = fs::File::create(self.log_path()).expect("log file");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(20)),
            "docker-registry did not listen on {}",
            self.port
        );
    }

    #[allow(dead_code)] // benches/e2e_proxy.rs reads its peak memory
    /// The server's process id (for memory figures).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The access log: lines like `"GET /v2/x/blobs/sha256:… HTTP/1.1" 200`.
    pub fn access_log(&self) -> Vec<String> {
        fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\" ") && l.contains(" HTTP/1.1\""))
            .map(str::to_owned)
            .collect()
    }

    /// How many requests `METHOD path` (path without query) pullgate made (by its
    /// User-Agent; the tests' own pushes do not count).
    pub fn count(&self, method: &str, path: &str) -> usize {
        let needle = format!("\"{method} {path} HTTP/1.1\"");
        let needle_q = format!("\"{method} {path}?");
        self.access_log()
            .iter()
            .filter(|l| l.contains(&needle) || l.contains(&needle_q))
            .filter(|l| l.contains("\"pullgate/"))
            .count()
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.stop();
    }
}
