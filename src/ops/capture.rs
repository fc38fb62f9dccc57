//! `tidemark capture`: the protection daemon, until SIGINT or SIGTERM.

use std::path::Path;

use super::OpError;
use crate::base::position::EndLsn;

/// Runs capture until a stop signal; returns the position confirmed last.
pub async fn run(config: &Path) -> Result<EndLsn, OpError> {
    let checked = super::load(config)?;
    #[cfg(feature = "kafka")]
    if let Some(kafka) = &checked.config.kafka {
        crate::sink::kafka::broker::producer(kafka)
            .map(drop)
            .map_err(|e| {
                OpError::Usage(format!(
                    "[kafka] settings refused by librdkafka: {e}; fix or remove that key"
                ))
            })?;
    }
    let path = config.to_path_buf();
    let status: crate::telemetry::StatusFn = std::sync::Arc::new(move || {
        let path = path.clone();
        Box::pin(async move {
            match super::status::run(&path).await {
                Ok(status) => (
                    serde_json::to_value(&status).unwrap_or_default(),
                    status.health == super::status::Health::Critical,
                ),
                Err(e) => (
                    serde_json::json!({"health": "critical", "error": e.to_string()}),
                    true,
                ),
            }
        })
    });
    crate::telemetry::install(checked.config.metrics.listen, Some(status))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        tracing::info!("stop requested; finishing");
        let _ = stop.send(true);
    });
    Ok(crate::capture::run(&checked, stopped).await?)
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        // Without a SIGTERM handler, SIGINT still stops capture cleanly.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
