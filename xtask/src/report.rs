//! What every benchmark's results page shares: when and where it ran, figures as medians with
//! their range, and where the page goes.

use std::process::Command;

use crate::root;

/// The machine a page was measured on: `"<date UTC>, kernel <release>, <n> CPUs"`.
pub fn machine() -> String {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{date}, kernel {}, {} CPUs",
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, usize::from)
    )
}

/// `median (low–high)` of `values`, each with `digits` decimals and `unit` appended.
pub fn median_and_range(values: &[f64], digits: usize, unit: &str) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match (sorted.first(), sorted.get(sorted.len() / 2), sorted.last()) {
        (Some(low), Some(median), Some(high)) => {
            format!("{median:.digits$}{unit} ({low:.digits$}–{high:.digits$}{unit})")
        }
        _ => "—".to_owned(),
    }
}

/// `median (low–high)×` of the round-by-round ratios `ours[i] / theirs[i]`: a ratio taken
/// within one round, where a slow spell of the machine moves both, is what reproduces.
pub fn paired_ratio(ours: &[f64], theirs: &[f64]) -> String {
    let ratios: Vec<f64> = ours.iter().zip(theirs).map(|(a, b)| a / b).collect();
    median_and_range(&ratios, 2, "×")
}

/// Prints a results page and, with `write`, saves it as `docs/performance/<file>`.
pub fn publish(file: &str, page: &str, write: bool) -> anyhow::Result<()> {
    println!("{page}");
    if write {
        let path = root().join("docs/performance").join(file);
        std::fs::write(&path, page)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}
