//! TLS against a real cluster that takes only `hostssl` connections, with
//! certificates this test makes: verify-full and verify-ca, a certificate
//! from another CA, sslmode=disable, and client certificates (plain and
//! encrypted keys) where pg_hba.conf asks for `cert`.

mod harness;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use harness::{Capture, Fixture};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tidemark::pg::ConnInfo;
use tidemark::replay::scratch::ScratchServer;
use tidemark::source::conn::ReplicationConnection;

const CERT_USER: &str = "certuser";
const KEY_PASSPHRASE: &str = "key passphrase";

/// The certificates the test made, and the cluster that uses them.
struct Tls {
    cluster: ScratchServer,
    dir: tempfile::TempDir,
}

impl Tls {
    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn private_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(params, key))
}

/// A certificate for `names` (SANs) and common name `cn`, signed by `issuer`.
fn leaf(names: &[&str], cn: &str, issuer: &Issuer<'_, KeyPair>) -> (String, KeyPair) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    (params.signed_by(&key, issuer).unwrap().pem(), key)
}

/// The same key as an encrypted PKCS#8 PEM, as `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes it.
fn encrypted(key: &KeyPair, passphrase: &str) -> String {
    use pkcs8::der::pem::LineEnding;
    let info = pkcs8::PrivateKeyInfo::try_from(key.serialized_der()).unwrap();
    let params = pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(
        2048,
        b"0123456789abcdef",
        b"fedcba9876543210",
    )
    .unwrap();
    let document = info.encrypt_with_params(params, passphrase).unwrap();
    document
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .unwrap()
        .to_string()
}

fn tls() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(|| {
        let cluster = ScratchServer::start_listening(&[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, ca) = new_ca("tidemark test CA");
        let (other_pem, _) = new_ca("another CA");
        let (server_pem, server_key) = leaf(&["localhost"], "localhost", &ca);
        let (client_pem, client_key) = leaf(&[], CERT_USER, &ca);
        private_file(&dir.path().join("ca.pem"), &ca_pem);
        private_file(&dir.path().join("other-ca.pem"), &other_pem);
        private_file(&dir.path().join("client.pem"), &client_pem);
        private_file(&dir.path().join("client.key"), &client_key.serialize_pem());
        private_file(
            &dir.path().join("client-encrypted.key"),
            &encrypted(&client_key, KEY_PASSPHRASE),
        );

        // The server's files live in its data dir, owned by whoever runs it.
        let data = cluster.data_dir();
        let owner = std::fs::metadata(&data).unwrap();
        for (name, text) in [
            ("server.crt", server_pem),
            ("server.key", server_key.serialize_pem()),
            ("root.crt", ca_pem),
        ] {
            let path = data.join(name);
            private_file(&path, &text);
            std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 hostssl all {CERT_USER} 127.0.0.1/32 cert\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256\n"
            ),
        )
        .unwrap();
        for sql in [
            "ALTER SYSTEM SET ssl = on".to_string(),
            "ALTER SYSTEM SET ssl_ca_file = 'root.crt'".to_string(),
            format!("CREATE ROLE {CERT_USER} LOGIN REPLICATION SUPERUSER"),
            "SELECT pg_reload_conf()".to_string(),
        ] {
            cluster.psql("postgres", &sql).unwrap();
        }
        let tls = Tls { cluster, dir };
        // The reload is asynchronous: wait until a verified connection gets in.
        // On a thread of its own, since the first test here may be async and
        // a runtime cannot block inside another.
        let probe = url(&tls, "postgres", "localhost", "verify-full", "ca.pem");
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let runtime = tokio::runtime::Runtime::new().unwrap();
                harness::wait_for(Duration::from_secs(30), "the server to take TLS", || {
                    runtime.block_on(info(&probe).connect()).is_ok()
                });
            });
        });
        tls
    })
}

fn url(tls: &Tls, db: &str, host: &str, mode: &str, root: &str) -> String {
    format!(
        "postgres://postgres:{}@{host}:{}/{db}?sslmode={mode}&sslrootcert={}",
        tls.cluster.password().unwrap(),
        tls.cluster.port(),
        tls.file(root)
    )
}

fn info(url: &str) -> ConnInfo {
    ConnInfo::parse_with_env(url, &|_| None).unwrap()
}

fn fixture(schema: &str) -> Fixture {
    // Fixture wants a 'static cluster; the TLS one lives as long as the binary.
    Fixture::in_cluster(&tls().cluster, schema)
}

async fn uses_tls(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn verify_full_and_verify_ca_connect_sql_and_replication() {
    let tls = tls();
    let fx = fixture("");
    let full = info(&url(tls, &fx.db, "localhost", "verify-full", "ca.pem"));
    assert!(uses_tls(&full.connect().await.unwrap()).await);
    let mut replication = ReplicationConnection::connect(&full).await.unwrap();
    replication.simple_query("IDENTIFY_SYSTEM").await.unwrap();

    // The certificate names localhost, not 127.0.0.1: verify-ca does not care, verify-full does.
    let by_address = info(&url(tls, &fx.db, "127.0.0.1", "verify-ca", "ca.pem"));
    assert!(uses_tls(&by_address.connect().await.unwrap()).await);
    ReplicationConnection::connect(&by_address).await.unwrap();
    let wrong_name = info(&url(tls, &fx.db, "127.0.0.1", "verify-full", "ca.pem"));
    let error = wrong_name.connect().await.unwrap_err().to_string();
    assert!(error.contains("not valid for host 127.0.0.1"), "{error}");
    let error = ReplicationConnection::connect(&wrong_name)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("not valid for host 127.0.0.1"), "{error}");

    // libpq's default, prefer, takes TLS when the server offers it.
    let default = format!(
        "postgres://postgres:{}@localhost:{}/{}",
        tls.cluster.password().unwrap(),
        tls.cluster.port(),
        fx.db
    );
    assert!(uses_tls(&info(&default).connect().await.unwrap()).await);
}

/// capture over verify-full, with the password in a password file and the TLS words in PG* variables.
#[test]
fn capture_streams_over_verify_full_with_the_password_in_a_passfile() {
    let tls = tls();
    let fx = fixture("CREATE TABLE t (id int PRIMARY KEY);");
    let passfile = fx.dir.path().join("pgpass");
    private_file(
        &passfile,
        &format!(
            "localhost:*:*:postgres:{}\n",
            tls.cluster.password().unwrap()
        ),
    );
    let url = format!(
        "postgres://postgres@localhost:{}/{}",
        tls.cluster.port(),
        fx.db
    );
    let config = fx.config_with_url(&url, &["public.t"], "");
    let root = tls.file("ca.pem");
    let capture = Capture::start_with_env(
        &config,
        &[
            ("PGPASSFILE", passfile.to_str().unwrap()),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", &root),
        ],
    );
    fx.wait_streaming(&capture);
    let ssl = fx.psql(&format!(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_replication_slots r ON r.active_pid = s.pid WHERE r.slot_name = '{}'",
        fx.slot()
    ));
    assert_eq!(ssl, "t", "the replication connection uses TLS");
    fx.psql("INSERT INTO t VALUES (1), (2)");
    fx.wait_caught_up(Duration::from_secs(30));
    assert_eq!(capture.stop(), 0);
    assert_eq!(fx.logged_ids(&config), vec![1, 2]);
    assert!(!std::fs::read_to_string(&config)
        .unwrap()
        .contains(tls.cluster.password().unwrap()));
}

/// Runs capture expecting it to refuse; returns its one line of stderr.
fn refused_capture(fx: &Fixture, url: &str) -> String {
    let config = fx.config_with_url(url, &["public.t"], "");
    let out = harness::tidemark(&["capture", "--config", config.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains(tls().cluster.password().unwrap()));
    stderr
}

#[test]
fn a_certificate_from_another_ca_is_refused_with_the_fix() {
    let fx = fixture("CREATE TABLE t (id int PRIMARY KEY);");
    let stderr = refused_capture(
        &fx,
        &url(tls(), &fx.db, "localhost", "verify-full", "other-ca.pem"),
    );
    assert!(
        stderr.contains("not signed by a CA in sslrootcert"),
        "{stderr}"
    );
}

#[test]
fn sslmode_disable_is_refused_by_a_tls_only_server_with_a_clear_line() {
    let fx = fixture("CREATE TABLE t (id int PRIMARY KEY);");
    let stderr = refused_capture(&fx, &url(tls(), &fx.db, "localhost", "disable", "ca.pem"));
    assert!(stderr.contains("accepts only TLS connections"), "{stderr}");
    assert!(stderr.contains("sslmode=disable"), "{stderr}");
}

#[tokio::test]
async fn a_client_certificate_logs_in_where_pg_hba_asks_for_cert() {
    let tls = tls();
    let fx = fixture("");
    let with_key = |key: &str, password: Option<&str>| {
        let mut url = format!(
            "host=localhost port={} user={CERT_USER} dbname={} sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            tls.cluster.port(),
            fx.db,
            tls.file("ca.pem"),
            tls.file("client.pem"),
            tls.file(key),
        );
        if let Some(password) = password {
            url += &format!(" sslpassword='{password}'");
        }
        info(&url)
    };
    let plain = with_key("client.key", None);
    let client = plain.connect().await.unwrap();
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, CERT_USER);
    ReplicationConnection::connect(&plain).await.unwrap();

    let encrypted = with_key("client-encrypted.key", Some(KEY_PASSPHRASE));
    assert!(uses_tls(&encrypted.connect().await.unwrap()).await);
    let wrong = with_key("client-encrypted.key", Some("not it"));
    let error = wrong.connect().await.unwrap_err().to_string();
    assert!(error.contains("sslpassword does not decrypt"), "{error}");

    // A key others may read is refused, as libpq refuses it.
    let shared: PathBuf = fx.dir.path().join("shared.key");
    std::fs::copy(tls.file("client.key"), &shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = with_key(shared.to_str().unwrap(), None)
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("chmod 600"), "{error}");
}
