//! The catalogue itself: each bad input, what it does, and what tidemark must answer.

use super::{args, with_url, Case, World, KEY_HEX, SECRET};

pub(super) fn cases(w: &World) -> Vec<Case> {
    let good = w.good();
    let capture = |config: String| args(&["capture", "--config", &config]);
    let case = |area, input, args, code, says| Case {
        area,
        input,
        args,
        code,
        says,
    };
    let key = w.file("key.hex", KEY_HEX, 0o600);
    let shared_key = w.file("shared.key", KEY_HEX, 0o644);
    let encrypted_archive = format!("file://{}", w.path("encrypted").display());
    let restore = |extra: &[&str]| {
        let mut all = args(&["restore", "--config", &good]);
        all.extend(args(extra));
        all
    };
    let empty_target = w.target("empty", "");
    let full_target = w.target("full", "CREATE TABLE payments (id int PRIMARY KEY, amount numeric); INSERT INTO payments VALUES (1, 1)");
    let no_table_target = w.target("notable", "");
    vec![
        // Config.
        case(
            "config",
            "the config file does not exist",
            capture(w.path("nope.toml").display().to_string()),
            2,
            "cannot read",
        ),
        case(
            "config",
            "the config is not TOML",
            capture(w.config("toml.toml", |t| t + "\n[source\n")),
            2,
            "line",
        ),
        case(
            "config",
            "a misspelt key",
            capture(w.config("typo.toml", |t| {
                t.replace("[log]\n", "[log]\nsegmnt_size = \"8MiB\"\n")
            })),
            2,
            "unknown field `segmnt_size`",
        ),
        case(
            "config",
            "no tables listed",
            capture(w.config("notables.toml", |t| {
                t.replace("tables = [\"public.payments\"]", "tables = []")
            })),
            2,
            "tables is empty",
        ),
        case(
            "config",
            "a table name PostgreSQL would not read",
            capture(w.config("badname.toml", |t| {
                t.replace("\"public.payments\"", "\"a.b.c.d\"")
            })),
            2,
            "is not a table name",
        ),
        case(
            "config",
            "a url that is not a connection string",
            capture(w.config(
                "badurl.toml",
                with_url(&format!("postgres://u:{SECRET}@h:notaport/db")),
            )),
            2,
            "not a valid PostgreSQL connection string",
        ),
        case(
            "config",
            "an sslmode libpq does not know",
            capture(w.config(
                "sslmode.toml",
                with_url(&format!("{}?sslmode=sometimes", w.fx.url())),
            )),
            2,
            "sslmode must be one of",
        ),
        case(
            "config",
            "an archive url of another kind",
            capture(w.config("archiveurl.toml", |t| t.replace(&w.archive, "ftp://x/y"))),
            2,
            "is not supported; use file:///absolute/path",
        ),
        case(
            "config",
            "two encryption keys",
            capture(w.config("twokeys.toml", |t| {
                t + &format!("encryption_key_file = {key:?}\nencryption_key_env = \"K\"\n")
            })),
            2,
            "not both",
        ),
        case(
            "config",
            "a zero upload interval",
            capture(w.config("interval.toml", |t| {
                t.replace("upload_interval = \"200ms\"", "upload_interval = \"0s\"")
            })),
            2,
            "upload_interval must be above zero",
        ),
        case(
            "config",
            "retention without an archive",
            capture(w.config("retention.toml", |t| {
                t.split("\n[archive]").next().unwrap().to_string()
                    + "\n[retention]\nwindow = \"7d\"\n"
            })),
            2,
            "[retention] needs an [archive]",
        ),
        case(
            "config",
            "an alert webhook that is not http(s)",
            capture(w.config("webhook.toml", |t| {
                t + &format!("\n[alerts]\nwebhook_url = \"ftp://hooks.example/{SECRET}\"\n")
            })),
            2,
            "[alerts] webhook_url must start with https://",
        ),
        case(
            "config",
            "a scheduled drill without a target",
            capture(w.config("drill.toml", |t| t + "\n[schedule]\ndrill = \"every 1h\"\n")),
            2,
            "[schedule] drill needs drill_target",
        ),
        case(
            "config",
            "a schedule that is neither cron nor every",
            capture(w.config("cron.toml", |t| t + "\n[schedule]\nverify = \"daily\"\n")),
            2,
            "five-field cron expression",
        ),
        case(
            "arguments",
            "alerts test with no channel configured",
            args(&["alerts", "test", "--config", &w.good()]),
            2,
            "[alerts] names no channel",
        ),
        case(
            "config",
            "an SMTP password variable that is not set",
            args(&[
                "alerts",
                "test",
                "--config",
                &w.config("smtp.toml", |t| {
                    t + "\n[alerts.email]\nsmtp_url = \"smtp://127.0.0.1:1\"\nusername = \"tm\"\npassword_env = \"TIDEMARK_UNSET_SMTP_PASSWORD\"\nfrom = \"tm@example.com\"\nto = [\"oncall@example.com\"]\n"
                }),
            ]),
            2,
            "password_env names TIDEMARK_UNSET_SMTP_PASSWORD, which is not set",
        ),
        case(
            "config",
            "a log bound below two segments",
            capture(w.config("maxsize.toml", |t| {
                t.replace("[log]\n", "[log]\nmax_size = \"1MiB\"\n")
            })),
            2,
            "max_size",
        ),
        case(
            "config",
            "previous keys without a current one",
            args(&[
                "list",
                "--config",
                &w.config("prevonly.toml", |t| {
                    t + &format!("previous_key_files = [{key:?}]\n")
                }),
            ]),
            2,
            "needs a current key",
        ),
        case(
            "config",
            "a malformed encryption key",
            args(&[
                "list",
                "--config",
                &w.config("badkey.toml", |t| {
                    t + &format!(
                        "encryption_key_file = {:?}\n",
                        w.file("bad.key", "xyz", 0o600)
                    )
                }),
            ]),
            2,
            "64 hex characters",
        ),
        case(
            "config",
            "an encryption key variable that is not set",
            args(&[
                "list",
                "--config",
                &w.config("keyenv.toml", |t| {
                    t + "encryption_key_env = \"TIDEMARK_NO_SUCH_KEY\"\n"
                }),
            ]),
            2,
            "is not set",
        ),
        // Files.
        case(
            "files",
            "a key file others may read",
            args(&[
                "list",
                "--config",
                &w.config("sharedkey.toml", |t| {
                    t + &format!("encryption_key_file = {shared_key:?}\n")
                }),
            ]),
            2,
            "chmod 600",
        ),
        case(
            "files",
            "a password file others may read",
            capture(w.config(
                "pgpass.toml",
                with_url(&format!(
                    "postgres://postgres@127.0.0.1:{}/{}?passfile={}",
                    w.fx.cluster.port(),
                    w.fx.db,
                    w.file("pgpass", &format!("*:*:*:*:{SECRET}\n"), 0o644)
                )),
            )),
            2,
            "chmod 600",
        ),
        case(
            "files",
            "a password file that is not there",
            capture(w.config(
                "nopgpass.toml",
                with_url(&format!(
                    "postgres://postgres@127.0.0.1:{}/{}?passfile=/nonexistent/pgpass",
                    w.fx.cluster.port(),
                    w.fx.db
                )),
            )),
            2,
            "check the path",
        ),
        case(
            "files",
            "a root certificate file that is not there",
            capture(w.config(
                "noroot.toml",
                with_url(&format!(
                    "{}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                    w.fx.url()
                )),
            )),
            2,
            "cannot read sslrootcert file",
        ),
        case(
            "files",
            "a client key others may read",
            capture(w.config(
                "sharedclientkey.toml",
                with_url(&format!(
                    "{}?sslmode=require&sslcert={}&sslkey={}",
                    w.fx.url(),
                    w.file("client.pem", "x", 0o600),
                    w.file("client.key", "x", 0o644)
                )),
            )),
            2,
            "chmod 600",
        ),
        case(
            "files",
            "a log dir that is a file",
            capture(w.config("logfile.toml", |t| {
                let line = t
                    .lines()
                    .find(|l| l.starts_with("dir = "))
                    .unwrap()
                    .to_string();
                t.replace(
                    &line,
                    &format!("dir = {:?}", w.file("plainfile", "x", 0o600) + "/log"),
                )
            })),
            2,
            "log dir",
        ),
        // Arguments.
        case(
            "arguments",
            "a re-read of a table capture does not watch",
            args(&["snapshot", "--config", &good, "--table", "public.other"]),
            2,
            "is not watched",
        ),
        case(
            "server",
            "a re-read while capture is not running",
            args(&["snapshot", "--config", &good, "--table", "public.payments"]),
            2,
            "capture is not running",
        ),
        case(
            "arguments",
            "an unknown command",
            args(&["restor"]),
            2,
            "unrecognized subcommand",
        ),
        case(
            "arguments",
            "a missing required flag",
            args(&["capture"]),
            2,
            "--config",
        ),
        case(
            "arguments",
            "a restore point that is not one",
            restore(&["--to", "yesterday", "--target", &empty_target]),
            2,
            "is not a restore point",
        ),
        case(
            "arguments",
            "a restore point outside the window",
            restore(&["--to", "2001-01-01T00:00:00Z", "--target", &empty_target]),
            2,
            "outside the restore window",
        ),
        case(
            "arguments",
            "restore without --target",
            restore(&["--to", "latest"]),
            2,
            "--target is required",
        ),
        case(
            "arguments",
            "a --target that is not a connection string",
            restore(&["--to", "latest", "--target", "postgres://x:notaport/db"]),
            2,
            "--target:",
        ),
        case(
            "arguments",
            "a table that is not archived",
            restore(&[
                "--to",
                "latest",
                "--target",
                &empty_target,
                "--table",
                "public.nope",
            ]),
            2,
            "is not in the archive",
        ),
        case(
            "arguments",
            "a --where with a second statement",
            restore(&[
                "--to",
                "latest",
                "--target",
                &empty_target,
                "--where",
                "true; DROP TABLE payments",
            ]),
            2,
            "does not apply to table",
        ),
        case(
            "arguments",
            "a --where that is not boolean",
            restore(&[
                "--to",
                "latest",
                "--target",
                &empty_target,
                "--where",
                "amount",
            ]),
            2,
            "does not apply to table",
        ),
        case(
            "arguments",
            "an LSN that is not one",
            args(&["log", "--config", &good, "--from", "12"]),
            2,
            "is not an LSN",
        ),
        case(
            "arguments",
            "a history key that is not a JSON object",
            args(&[
                "history",
                "--config",
                &good,
                "--table",
                "public.payments",
                "--key",
                "42",
            ]),
            2,
            "--key",
        ),
        case(
            "arguments",
            "a bench source that is not a connection string",
            args(&["bench", "--source-url", "postgres://x:notaport/db"]),
            2,
            "not a valid PostgreSQL connection string",
        ),
        // Server state.
        case(
            "server",
            "a wrong password",
            capture(w.config("password.toml", with_url(&w.url_as("postgres", SECRET)))),
            2,
            "rejected user postgres",
        ),
        case(
            "server",
            "nothing listening at the host",
            capture(w.config(
                "unreachable.toml",
                with_url(&format!(
                    "postgres://postgres:{SECRET}@127.0.0.1:1/{}",
                    w.fx.db
                )),
            )),
            2,
            "cannot reach the source",
        ),
        case(
            "server",
            "TLS required of a server without it",
            capture(w.config(
                "notls.toml",
                with_url(&format!("{}?sslmode=require", w.fx.url())),
            )),
            2,
            "does not offer TLS",
        ),
        case(
            "server",
            "a table that does not exist",
            capture(w.config("missing.toml", |t| {
                t.replace(
                    "\"public.payments\"",
                    "\"public.payments\", \"public.nope\"",
                )
            })),
            2,
            "table public.nope does not exist",
        ),
        case(
            "server",
            "a view, not a table",
            capture(w.config("view.toml", |t| {
                t.replace("\"public.payments\"", "\"public.payments_view\"")
            })),
            2,
            "is not an ordinary table",
        ),
        case(
            "server",
            "a table without a replica identity",
            capture(w.config("nokey.toml", |t| {
                t.replace("\"public.payments\"", "\"public.nokey\"")
            })),
            2,
            "has no usable replica identity",
        ),
        case(
            "server",
            "a role that may not replicate",
            capture(w.config("norepl.toml", with_url(&w.url_as("norepl", SECRET)))),
            2,
            "may not start replication",
        ),
        case(
            "server",
            "a role that may not read a table",
            capture(w.config("noselect.toml", with_url(&w.url_as("noselect", SECRET)))),
            2,
            "may not read table",
        ),
        case(
            "server",
            "restoring into the source",
            restore(&["--to", "latest", "--target", &w.fx.url()]),
            2,
            "is the source",
        ),
        case(
            "server",
            "a target that already has the table",
            restore(&["--to", "latest", "--target", &full_target]),
            2,
            "already exists in the target",
        ),
        case(
            "server",
            "live rows without --force",
            restore(&["--to", "latest", "--target", &full_target, "--data-only"]),
            2,
            "already holds rows",
        ),
        case(
            "server",
            "--data-only without the table",
            restore(&[
                "--to",
                "latest",
                "--target",
                &no_table_target,
                "--data-only",
            ]),
            2,
            "does not exist in the target",
        ),
        // Archive contents.
        case(
            "archive",
            "an empty archive",
            args(&[
                "restore",
                "--config",
                &w.config("empty.toml", |t| {
                    t.replace(&w.archive, &format!("file://{}", w.path("void").display()))
                }),
                "--to",
                "latest",
                "--dry-run",
            ]),
            2,
            "the archive is empty",
        ),
        case(
            "archive",
            "an encrypted archive read without its key",
            args(&[
                "list",
                "--config",
                &w.config("nokey-archive.toml", |t| {
                    t.replace(&w.archive, &encrypted_archive)
                }),
            ]),
            2,
            "no key is configured",
        ),
        case(
            "archive",
            "an encrypted archive read with another key",
            args(&[
                "list",
                "--config",
                &w.config("otherkey.toml", |t| {
                    t.replace(&w.archive, &encrypted_archive)
                        + &format!(
                            "encryption_key_file = {:?}\n",
                            w.file("other.key", &KEY_HEX.replace('8', "9"), 0o600)
                        )
                }),
            ]),
            2,
            "but the configured keys are",
        ),
        case(
            "archive",
            "a cleartext archive read with a key",
            args(&[
                "list",
                "--config",
                &w.config("cleartext.toml", |t| {
                    t + &format!("encryption_key_file = {key:?}\n")
                }),
            ]),
            2,
            "is not encrypted",
        ),
    ]
}
