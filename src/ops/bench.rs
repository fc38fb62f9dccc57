//! `tidemark bench`: this machine's numbers, in one run.

use std::path::{Path, PathBuf};

use super::OpError;
use crate::bench::report::Results;
use crate::bench::{self, Options};

/// Where the reports go.
pub struct Outputs {
    pub json: Option<PathBuf>,
    pub report: Option<PathBuf>,
}

/// Runs the bench with `options` in a fresh directory under its `work_dir`,
/// removed afterwards, and writes the reports.
pub async fn run(mut options: Options, outputs: &Outputs) -> Result<Results, OpError> {
    if options.kafka_brokers.is_some() && !cfg!(feature = "kafka") {
        return Err(OpError::Usage(
            "--kafka-brokers: this tidemark was built without the Kafka feed; build it with the kafka feature (on by default)".into(),
        ));
    }
    if options.rounds == 0 || options.changes == 0 || options.rate_seconds <= 0.0 {
        return Err(OpError::Usage(
            "--rounds, --changes and --rate-seconds must be above zero".into(),
        ));
    }
    let work = tempfile::tempdir_in(&options.work_dir).map_err(|e| {
        OpError::Usage(format!(
            "cannot make a work directory in {}: {e}",
            options.work_dir.display()
        ))
    })?;
    options.work_dir = work.path().to_path_buf();
    let results = bench::run(&options, &mut std::io::stderr()).await?;
    if let Some(path) = &outputs.json {
        let text = serde_json::to_string_pretty(&results).map_err(std::io::Error::from);
        write(path, text.and_then(|t| std::fs::write(path, t)))?;
    }
    if let Some(path) = &outputs.report {
        write(path, results.write_report(path))?;
    }
    Ok(results)
}

fn write(path: &Path, result: std::io::Result<()>) -> Result<(), OpError> {
    result.map_err(|e| OpError::Usage(format!("cannot write {}: {e}", path.display())))
}
