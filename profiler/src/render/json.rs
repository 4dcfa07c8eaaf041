//! `summary.json`: the summary for machines.

use crate::analysis::Summary;

/// `summary.json`.
pub fn summary_json(summary: &Summary) -> String {
    let mut json = serde_json::to_string_pretty(summary).expect("summary serializes");
    json.push('\n');
    json
}
