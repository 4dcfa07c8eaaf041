//! The status line shown while profiling.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use profiler_common::counter;

use crate::kernel::Counters;

pub(super) fn status_line(verbose: bool) -> ProgressBar {
    // Quiet when stderr is not a terminal (CI logs, pipes).
    let bar = if std::io::stderr().is_terminal() || verbose {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} profiling {prefix}: {elapsed} {msg}")
            .expect("valid template"),
    );
    bar
}

pub(super) fn status_message(counters: &Counters) -> String {
    let lost = counters[counter::SAMPLE_MAP_FULL as usize];
    format!(
        "{} samples, {} lost",
        counters[counter::CPU_SAMPLES as usize],
        lost
    )
}
