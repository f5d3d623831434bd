//! Test certificates made with the `openssl` command: a CA, and server certificates it
//! signs for `localhost` and `127.0.0.1` (Go and rustls clients both want a real CA above
//! the leaf, not a self-signed leaf).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::require;

pub struct Ca {
    pub dir: PathBuf,
}

/// A server certificate and its key, PEM.
pub struct Leaf {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// The certificate's subject CN, to tell two leaves apart on the wire.
    pub cn: String,
}

/// Run openssl in `dir`; its standard output (a signature, a key) on success.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new(require("openssl"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl Ca {
    /// A new CA in `dir` (`ca.crt`, `ca.key`).
    pub fn new(dir: &Path) -> Ca {
        std::fs::create_dir_all(dir).expect("ca dir");
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
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "30",
                "-subj",
                "/CN=pullgate test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Ca {
            dir: dir.to_owned(),
        }
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A leaf for localhost and 127.0.0.1 with subject `CN=<cn>`.
    pub fn leaf(&self, cn: &str) -> Leaf {
        let d = &self.dir;
        std::fs::write(
            d.join(format!("{cn}.ext")),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext file");
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
                &format!("{cn}.key"),
                "-out",
                &format!("{cn}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{cn}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{cn}.crt"),
                "-days",
                "30",
                "-extfile",
                &format!("{cn}.ext"),
            ],
        );
        Leaf {
            cert: std::fs::read(d.join(format!("{cn}.crt"))).expect("leaf cert"),
            key: std::fs::read(d.join(format!("{cn}.key"))).expect("leaf key"),
            cn: cn.to_owned(),
        }
    }
}

/// The subject CN of the certificate a TLS server on `port` presents now.
pub fn served_cn(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .rsplit("CN = ")
        .next()
        .unwrap_or_default()
        .to_owned()
}
