//! pullgate itself, started from the binary cargo built for these tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_port};

pub struct Options {
    /// The default upstream's name and URL.
    pub upstream_name: String,
    pub upstream_url: String,
    pub credentials: Option<PathBuf>,
    pub tag_ttl: String,
    pub read_timeout: String,
    /// Listen on this port (else a free one).
    pub port: Option<u16>,
    /// The cache directory (else `cache/` in the instance's temp dir).
    pub cache_dir: Option<PathBuf>,
    /// More keys for the `[cache]` table (`max_size = "8MiB"` ...).
    pub cache_extra: String,
    /// More keys for the `[server]` table (`max_connections = 100` ...).
    pub server_extra: String,
    /// More TOML appended to the configuration (`[auth]`, `[audit]` ...).
    pub extra: String,
    /// More command-line arguments after `serve --config <file>`.
    pub args: Vec<String>,
    /// `RUST_LOG` for the process.
    pub log_filter: String,
    /// More environment variables for the process.
    pub env: Vec<(String, String)>,
}

impl Options {
    pub fn new(upstream_url: &str) -> Options {
        let name = upstream_url
            .split("://")
            .nth(1)
            .unwrap_or(upstream_url)
            .trim_end_matches('/')
            .to_owned();
        Options {
            upstream_name: name,
            upstream_url: upstream_url.to_owned(),
            credentials: None,
            tag_ttl: "60s".into(),
            read_timeout: "30s".into(),
            port: None,
            cache_dir: None,
            server_extra: String::new(),
            cache_extra: String::new(),
            extra: String::new(),
            args: Vec::new(),
            log_filter: "info,pullgate=debug".into(),
            env: Vec::new(),
        }
    }
}

pub struct Pullgate {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
    log_filter: String,
    env: Vec<(String, String)>,
    cache_dir: PathBuf,
}

impl Pullgate {
    pub fn start(opts: Options) -> Pullgate {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = opts.port.unwrap_or_else(free_port);
        let mut config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{}\n\n[cache]\ndir = \"{}\"\ntag_ttl = \"{}\"\n{}\n\n[[upstream]]\nname = \"{}\"\nurl = \"{}\"\nread_timeout = \"{}\"\nconnect_timeout = \"2s\"\n",
            opts.server_extra,
            opts.cache_dir
                .clone()
                .unwrap_or_else(|| dir.path().join("cache"))
                .display(),
            opts.tag_ttl,
            opts.cache_extra,
            opts.upstream_name,
            opts.upstream_url,
            opts.read_timeout,
        );
        if let Some(c) = &opts.credentials {
            config.push_str(&format!("credentials = \"{}\"\n", c.display()));
        }
        config.push('\n');
        config.push_str(&opts.extra);
        let config_path = dir.path().join("pullgate.toml");
        fs::write(&config_path, config).expect("write config");
        let cache_dir = opts
            .cache_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("cache"));
        let mut p = Pullgate {
            port,
            cache_dir,
            dir,
            child: None,
            args: opts.args,
            log_filter: opts.log_filter,
            env: opts.env,
        };
        p.spawn(&config_path);
        p
    }

    fn spawn(&mut self, config: &Path) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pullgate"))
            .args(["serve", "--config"])
            .arg(config)
            .args(&self.args)
            .env("RUST_LOG", &self.log_filter)
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting pullgate");
        if !wait_port(self.port, Duration::from_secs(20)) {
            let _ = child.kill();
            panic!("pullgate did not listen; log:\n{}", self.log());
        }
        self.child = Some(child);
    }

    /// Send SIGTERM and wait for the process to exit (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("pullgate is running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "pullgate still running {timeout:?} after SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash or the OOM killer would: no drain, no index flush.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("pullgate is running");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }

    /// The configuration file it runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pullgate.toml")
    }

    /// `pullgate cache <args>`, with `--config <its configuration>` unless `args` name one.
    pub fn cache_command(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullgate"));
        cmd.arg("cache").args(args);
        if !args.contains(&"--config") {
            cmd.arg("--config").arg(self.config_path());
        }
        cmd.env("NO_COLOR", "1")
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("running pullgate cache")
    }

    /// Start it again, on the same port, configuration and cache.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "terminate it first");
        let config = self.dir.path().join("pullgate.toml");
        self.spawn(&config);
    }

    #[allow(dead_code)] // benches/e2e_proxy.rs reads its peak memory
    /// The process id, while it runs (for memory figures).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone()
    }

    /// Where the store keeps a committed blob (the layout is part of the contract).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.cache_dir()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
    }

    /// Files currently in the cache's tmp/ directory.
    pub fn tmp_files(&self) -> usize {
        fs::read_dir(self.cache_dir().join("tmp")).map_or(0, |d| d.count())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pullgate.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Pullgate {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
