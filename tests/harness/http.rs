//! Reaching capture's HTTP server: its port, `/metrics` and the other paths.

use std::path::Path;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The metrics port a config written by `Fixture::config` uses.
pub fn metrics_port(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    let line = text.lines().find(|l| l.starts_with("listen = ")).unwrap();
    line.trim_end_matches('"')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// GET /metrics from a capture, as text.
pub fn scrape(port: u16) -> String {
    http_get(port, "/metrics")
        .map(|(_, body)| body)
        .expect("reading /metrics")
}

/// GETs `path` from capture's HTTP server: the status code and the body; `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// The value of the first sample whose line starts with `series` (name plus labels).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// One sample from the `/metrics` of the capture running with `config`;
/// `None` while nothing answers or the series is not there yet.
pub fn metric(config: &Path, series: &str) -> Option<f64> {
    let (_, body) = http_get(metrics_port(config), "/metrics")?;
    sample(&body, series)
}
