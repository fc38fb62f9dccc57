//! The S3 server the tests archive to: moto's real HTTP server, one per test binary.

use std::process::{Child, Command, Stdio};
#[cfg(feature = "s3")]
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::wait_for;

/// A real S3-compatible HTTP server (moto), one per test binary.
pub struct S3Server {
    _child: Child,
    pub endpoint: String,
}

pub const S3_KEY_ID: &str = "tidemark-test-key";
pub const S3_SECRET: &str = "tidemark-test-secret";

/// The environment a process needs to reach the test S3 server.
pub fn s3_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", S3_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

pub fn s3() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        S3Server::start_on(port)
    })
}

impl S3Server {
    /// Starts a server on `port`; a test may start one late, on a port capture already uses.
    pub fn start_on(port: u16) -> S3Server {
        static ENV: std::sync::Once = std::sync::Once::new();
        // Set once, before this binary's first S3 client reads them.
        ENV.call_once(|| {
            for (key, value) in s3_env() {
                std::env::set_var(key, value);
            }
        });
        let mut command = Command::new("python3");
        command
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = tidemark::child::spawn_tied_to_process(command)
            .expect("starting moto (run scripts/setup.sh)");
        wait_for(Duration::from_secs(60), "the S3 server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        S3Server {
            _child: child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Creates a fresh bucket and returns its name.
    #[cfg(feature = "s3")]
    pub async fn bucket(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tm-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.create_bucket(&name).await;
        name
    }

    /// Through the AWS SDK, which only a build with the s3 feature links.
    #[cfg(feature = "s3")]
    pub async fn create_bucket(&self, name: &str) {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await;
        let client = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .endpoint_url(&self.endpoint)
                .force_path_style(true)
                .build(),
        );
        client
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .expect("creating a bucket");
    }

    pub fn options(&self) -> tidemark::archive::store::S3Options {
        tidemark::archive::store::S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            path_style: true,
        }
    }
}
