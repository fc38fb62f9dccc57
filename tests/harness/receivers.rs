//! Real receivers for alerts: an HTTP server that records every request it
//! is sent (webhooks, Slack) and answers with a status the test sets per
//! path, and a real SMTP server (aiosmtpd) whose messages the test reads.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub body: String,
}

#[derive(Default)]
struct Shared {
    requests: Vec<Request>,
    answers: BTreeMap<String, u16>,
}

pub struct HttpReceiver {
    port: u16,
    shared: Arc<Mutex<Shared>>,
}

impl HttpReceiver {
    pub fn start() -> HttpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = state.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        HttpReceiver { port, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// From now on, requests to `path` are answered with `status`.
    pub fn answer(&self, path: &str, status: u16) {
        self.shared
            .lock()
            .unwrap()
            .answers
            .insert(path.to_string(), status);
    }

    /// The bodies received on `path` (the query string is not part of it), in order.
    pub fn bodies(&self, path: &str) -> Vec<String> {
        self.shared
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path.split('?').next() == Some(path))
            .map(|r| r.body.clone())
            .collect()
    }

    /// Bodies on `path` parsed as JSON.
    pub fn json(&self, path: &str) -> Vec<serde_json::Value> {
        self.bodies(path)
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    }
}

fn serve(stream: std::net::TcpStream, shared: &Mutex<Shared>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = {
            let mut shared = shared.lock().unwrap();
            shared.requests.push(Request {
                path: path.clone(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let bare = path.split('?').next().unwrap_or("").to_string();
            shared.answers.get(&bare).copied().unwrap_or(200)
        };
        let answer =
            format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok");
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// aiosmtpd, writing each message it takes as one JSON line to a file.
pub struct SmtpServer {
    _child: Child,
    pub port: u16,
    messages: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    pub fn start() -> SmtpServer {
        let port = super::free_port();
        let dir = tempfile::tempdir().unwrap();
        let messages = dir.path().join("messages.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/harness/smtp_sink.py");
        let mut command = Command::new("python3");
        command
            .args([script, &port.to_string(), messages.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = tidemark::child::spawn_tied_to_process(command)
            .expect("starting the SMTP server (run scripts/setup.sh --dev for aiosmtpd)");
        super::wait_for(Duration::from_secs(30), "the SMTP server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        SmtpServer {
            _child: child,
            port,
            messages,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message taken so far: `from`, `to` and the raw `data`.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.messages)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
