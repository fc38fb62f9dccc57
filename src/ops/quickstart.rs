//! `tidemark quickstart`: the whole story on embedded defaults.

use std::io::Write;
use std::path::PathBuf;

use super::OpError;

/// Runs in `dir` (kept), or in a temporary directory removed afterwards.
pub async fn run(dir: Option<PathBuf>, out: &mut impl Write) -> Result<(), OpError> {
    let temp;
    let kept = dir.is_some();
    let dir = match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| OpError::Usage(format!("--dir {}: {e}", dir.display())))?;
            dir
        }
        None => {
            temp = tempfile::tempdir().map_err(crate::quickstart::QuickstartError::from)?;
            temp.path().to_path_buf()
        }
    };
    let status: crate::quickstart::StatusReport = Box::new(|config| {
        Box::pin(async move {
            match super::status::run(&config).await {
                Ok(status) => status.to_string(),
                Err(e) => format!("status: {e}\n"),
            }
        })
    });
    Ok(crate::quickstart::run(&dir, kept, status, out).await?)
}
