//! Raw HTTP against pullgate, for what skopeo cannot show: statuses, headers, error bodies,
//! ranges, and bodies that end badly.

use bytes::Bytes;

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// `Err` when the body did not arrive whole (connection cut, length short).
    pub body: Result<Bytes, String>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn bytes(&self) -> &Bytes {
        match &self.body {
            Ok(b) => b,
            Err(e) => panic!("body failed: {e}"),
        }
    }

    /// The first OCI error code of the body.
    pub fn error_code(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_slice(self.bytes()).expect("an OCI error body is JSON");
        v["errors"][0]["code"]
            .as_str()
            .expect("errors[0].code")
            .to_owned()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .expect("client")
}

pub async fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    request_from(None, method, url, headers).await
}

/// From a chosen local address (`127.0.0.2` is another client as far as pullgate knows).
pub async fn request_from(
    local: Option<std::net::IpAddr>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(120))
        .local_address(local)
        .build()
        .expect("client");
    let mut r = client.request(method.parse().expect("method"), url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(|e| format!("{e:?}"));
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(url: &str) -> Reply {
    request("GET", url, &[]).await
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The value of one series on `/metrics` (served without credentials, like the probes),
/// named exactly as exported: `name` or `name{label="value",...}`.
pub async fn metric(base_url: &str, series: &str) -> f64 {
    metric_value(&metrics_text(base_url).await, series)
}

/// One series' value in a `/metrics` text.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{text}"))
}

pub async fn metrics_text(base_url: &str) -> String {
    let r = get(&format!("{base_url}/metrics")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    String::from_utf8_lossy(r.bytes()).into_owned()
}

/// Wait until no fill is under way. A client has its last byte once the blob is verified;
/// the commit (fsync, rename, index) finishes just after, and some tests look at the cache.
pub async fn fills_settled(base_url: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = metrics_text(base_url).await;
        if metric_value(&text, "pullgate_fills_in_flight") == 0.0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fills still in flight after 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
