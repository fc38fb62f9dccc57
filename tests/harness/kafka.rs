//! The Kafka broker the feed tests publish to: tansu, read back with kafka-python.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, s3, wait_for, S3_KEY_ID, S3_SECRET};

/// A Kafka-protocol broker (tansu) that persists to the test S3 server, so a
/// restart keeps its topics.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    bucket: String,
}

impl Broker {
    pub async fn start() -> Broker {
        let mut broker = Broker::reserve().await;
        broker.spawn();
        broker
    }

    /// A broker's address and storage, not started yet (see `spawn`).
    pub async fn reserve() -> Broker {
        Broker {
            child: None,
            port: free_port(),
            bucket: s3().bucket().await,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn spawn(&mut self) {
        let listener = format!("tcp://{}", self.address());
        let mut command = Command::new("tansu");
        command
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", &format!("s3://{}/", self.bucket)])
            .env("AWS_ENDPOINT", &s3().endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", S3_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(
            tidemark::child::spawn_tied_to_process(command)
                .expect("starting tansu (run scripts/setup.sh)"),
        );
        let port = self.port;
        wait_for(Duration::from_secs(30), "the broker to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Every message of `topics`, read by kafka-python.
    pub fn read(&self, topics: &[&str]) -> Vec<serde_json::Value> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/harness/kafka_read.py");
        let out = Command::new("python3")
            .arg(script)
            .arg(self.address())
            .args(topics)
            .output()
            .expect("running kafka-python (run scripts/setup.sh)");
        assert!(
            out.status.success(),
            "kafka-python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
