//! The troubleshooting catalogue: every bad input tidemark is known to meet,
//! across config, arguments, server state, files and archive contents, run
//! for real. Each gets its exit code, exactly one line that says what is wrong
//! and how to fix it, and no secret. `docs/troubleshooting.md` is the same
//! table for people; this test holds the two together.

mod cases;
#[path = "../harness/mod.rs"]
mod harness;

use cases::cases;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::Fixture;

const SCHEMA: &str = "
    CREATE TABLE payments (id int PRIMARY KEY, amount numeric);
    CREATE TABLE nokey (v text);
    CREATE VIEW payments_view AS SELECT * FROM payments;
";
const KEY_HEX: &str = "8f1e6a2b9c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdde";
const SECRET: &str = "hunter2-catalogue";

/// One bad input: where it comes from, what to run, and what must come back.
struct Case {
    area: &'static str,
    input: &'static str,
    args: Vec<String>,
    code: i32,
    says: &'static str,
}

/// The world the cases run in: a source with a captured log and an archive.
struct World {
    fx: Fixture,
    archive: String,
}

impl World {
    fn dir(&self) -> &Path {
        self.fx.dir.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// A config file named `name`: the good one with `edit` applied to its text.
    fn config(&self, name: &str, edit: impl Fn(String) -> String) -> String {
        let good = std::fs::read_to_string(self.path("good.toml")).unwrap();
        let path = self.path(name);
        std::fs::write(&path, edit(good)).unwrap();
        path.display().to_string()
    }

    fn good(&self) -> String {
        self.path("good.toml").display().to_string()
    }

    fn file(&self, name: &str, text: &str, mode: u32) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    }

    fn url_as(&self, user: &str, password: &str) -> String {
        self.fx.cluster.url_as(user, password, &self.fx.db)
    }

    fn target(&self, name: &str, schema: &str) -> String {
        let db = format!("{}_{name}", self.fx.db);
        self.fx.psql(&format!("CREATE DATABASE {db}"));
        if !schema.is_empty() {
            self.fx.cluster.psql(&db, schema).unwrap();
        }
        self.fx.cluster.url(&db)
    }
}

fn with_url(url: &str) -> impl Fn(String) -> String + '_ {
    move |text: String| {
        let line = text
            .lines()
            .find(|l| l.starts_with("url = "))
            .unwrap()
            .to_string();
        text.replacen(&line, &format!("url = {url:?}"), 1)
    }
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn world() -> World {
    let fx = Fixture::new(SCHEMA);
    let archive = format!("file://{}", fx.archive_dir().display());
    let config = fx.config(
        &["public.payments"],
        &format!("\n[archive]\nurl = {archive:?}\nupload_interval = \"200ms\"\n"),
    );
    std::fs::rename(&config, fx.dir.path().join("good.toml")).unwrap();
    let config = fx.dir.path().join("good.toml");
    let capture = fx.start_capture(&config);
    fx.psql("INSERT INTO payments SELECT g, g FROM generate_series(1, 50) g");
    fx.wait_base_snapshot(&config);
    fx.wait_caught_up(Duration::from_secs(30));
    assert_eq!(capture.stop(), 0);
    fx.psql(&format!(
        "CREATE ROLE norepl LOGIN PASSWORD '{SECRET}'; CREATE ROLE noselect LOGIN REPLICATION PASSWORD '{SECRET}'; \
         GRANT SELECT ON payments TO norepl"
    ));
    World { fx, archive }
}

/// Runs tidemark; a case that does not end within a minute (it was let through) is killed.
fn run_bounded(args: &[String]) -> std::process::Output {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .env("RUST_LOG", "off")
        .env_remove("PGPASSWORD")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output().unwrap()));
    finished
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            harness::signal(pid, libc::SIGKILL);
            panic!("tidemark {args:?} ran on: the input was not refused")
        })
}

/// Makes an encrypted archive for the cases that read one.
async fn encrypted_archive(w: &World) {
    use std::sync::Arc;
    let key = tidemark::archive::crypt::Key::from_hex(KEY_HEX).unwrap();
    let keys = Arc::new(tidemark::archive::crypt::Keyring::new(key, Vec::new()));
    let url = format!("file://{}", w.path("encrypted").display());
    let store = tidemark::archive::store::open_with_key(&url, &Default::default(), Some(keys))
        .await
        .unwrap();
    let plain = tidemark::archive::store::open(&w.archive, &Default::default())
        .await
        .unwrap();
    let (_, mut manifest) = tidemark::archive::manifest::load_latest(&*plain)
        .await
        .unwrap()
        .unwrap();
    tidemark::archive::manifest::store_next(&*store, &mut manifest)
        .await
        .unwrap();
}

#[tokio::test]
async fn every_catalogued_bad_input_gets_one_line_and_its_exit_code() {
    let w = tokio::task::spawn_blocking(world).await.unwrap();
    encrypted_archive(&w).await;
    let cases = cases(&w);
    assert!(
        cases.len() >= 40,
        "the catalogue holds {} cases",
        cases.len()
    );
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/troubleshooting.md"
    ))
    .unwrap();
    let mut failures = Vec::new();
    for case in &cases {
        let out = run_bounded(&case.args);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let mut wrong = Vec::new();
        if out.status.code() != Some(case.code) {
            wrong.push(format!("exit {:?}, want {}", out.status.code(), case.code));
        }
        if stderr.lines().count() != 1 {
            wrong.push("not one line".to_string());
        }
        if !stderr.contains(case.says) {
            wrong.push(format!("does not say {:?}", case.says));
        }
        if stderr.contains(SECRET) || stderr.contains(KEY_HEX) {
            wrong.push("shows a secret".to_string());
        }
        if !doc.contains(case.input) {
            wrong.push("missing from docs/troubleshooting.md".to_string());
        }
        println!(
            "| {} | {} | {} | `{}` |",
            case.area,
            case.input,
            out.status.code().unwrap_or(-1),
            stderr.trim_start_matches("error: ")
        );
        if !wrong.is_empty() {
            failures.push(format!(
                "[{}] {}: {}\n    {stderr}",
                case.area,
                case.input,
                wrong.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
