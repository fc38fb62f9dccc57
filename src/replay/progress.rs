//! Progress bars for a restore's phases. Bars draw on stderr and hide
//! themselves when it is not a terminal; compaction and tests use hidden ones.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where a restore's phase bars go.
#[derive(Clone)]
pub struct Phases {
    multi: Option<MultiProgress>,
}

/// What a bar counts.
#[derive(Clone, Copy)]
pub enum Unit {
    Bytes,
    Steps,
}

impl Phases {
    /// No bars.
    pub fn hidden() -> Self {
        Phases { multi: None }
    }

    /// Bars on stderr.
    pub fn on_stderr() -> Self {
        Phases {
            multi: Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// A bar for one phase, `total` long.
    pub fn bar(&self, phase: &str, total: u64, unit: Unit) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let counts = match unit {
            Unit::Bytes => "{binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec})",
            Unit::Steps => "{pos}/{len}",
        };
        let style = ProgressStyle::with_template(&format!(
            "{{prefix:>18}} [{{bar:30}}] {counts} {{elapsed_precise}}"
        ))
        .expect("a valid template")
        .progress_chars("=> ");
        multi.add(
            ProgressBar::new(total)
                .with_style(style)
                .with_prefix(phase.to_string()),
        )
    }
}
