//! The ready-made monitoring and deployment files: the Prometheus rules pass
//! promtool (and their own rule tests), the dashboard and the rules name
//! only series tidemark serves, the systemd unit passes systemd-analyze, and
//! the Kubernetes manifest holds a config tidemark accepts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(command: &mut Command) -> (bool, String) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (run scripts/setup.sh --dev)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every `tidemark_*` name in `text`.
fn series_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("tidemark_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        rest = &rest[start + name.len()..];
        names.insert(name);
    }
    names
}

/// The series tidemark defines: the names in `src/telemetry.rs`.
fn served() -> BTreeSet<String> {
    series_in(&std::fs::read_to_string(repo("src/telemetry.rs")).unwrap())
}

#[test]
fn the_prometheus_rules_pass_promtool_and_their_tests() {
    let rules = repo("docs/prometheus-alerts.yml");
    let (ok, text) = run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules));
    assert!(ok, "{text}");
    let (ok, text) = run(Command::new("promtool")
        .args(["test", "rules", "prometheus-alerts.test.yml"])
        .current_dir(repo("docs")));
    assert!(ok, "{text}");
}

#[test]
fn the_rules_and_the_dashboard_name_only_series_tidemark_serves() {
    let served = served();
    for file in ["docs/prometheus-alerts.yml", "docs/grafana-dashboard.json"] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        let named = series_in(&text);
        assert!(named.len() >= 6, "{file} names only {named:?}");
        let unknown: Vec<_> = named.difference(&served).collect();
        assert!(
            unknown.is_empty(),
            "{file} names series tidemark does not serve: {unknown:?}"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("docs/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels {
        assert!(!panel["targets"].as_array().unwrap().is_empty(), "{panel}");
    }
}

#[test]
fn the_systemd_unit_verifies_and_restarts_on_failure() {
    let unit = std::fs::read_to_string(repo("deploy/tidemark.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/tidemark capture",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "UMask=0077",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: the unit was checked by its keys only");
        return;
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tidemark.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/tidemark", env!("CARGO_BIN_EXE_tidemark")),
    )
    .unwrap();
    let (ok, text) = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    assert!(ok && text.trim().is_empty(), "{text}");
}

#[test]
fn the_kubernetes_manifest_probes_healthz_and_holds_a_valid_config() {
    let (ok, json) = run(Command::new("python3").args([
        "-c",
        "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        repo("deploy/kubernetes.yaml").to_str().unwrap(),
    ]));
    assert!(ok, "{json}");
    let objects: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["ConfigMap", "Service", "StatefulSet"]);
    let set = &objects[2]["spec"];
    assert_eq!(set["replicas"], 1);
    assert_eq!(set["volumeClaimTemplates"][0]["metadata"]["name"], "log");
    let container = &set["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["volumeMounts"][1]["name"], "log");

    let toml = objects[0]["data"]["tidemark.toml"].as_str().unwrap();
    let checked =
        tidemark::config::Config::from_toml(Path::new("tidemark.toml"), toml, std::iter::empty())
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(checked.config.metrics.listen.to_string(), "0.0.0.0:9817");
    assert!(checked.config.schedule.verify.is_some());
    assert_eq!(
        checked.config.log.dir,
        Path::new(container["volumeMounts"][1]["mountPath"].as_str().unwrap()).join("log")
    );
}
