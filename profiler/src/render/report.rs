//! `report.html`: one self-contained page (no network requests; it works opened from disk or
//! as a CI artifact) with the verdict, an interactive flamegraph per view, the memory
//! timeline and the I/O and scheduler tables.

use std::fmt::Write as _;

use base64::Engine as _;

use super::flamegraph::View;
use crate::analysis::Summary;

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A verdict sentence: escaped, with `code` spans.
fn inline_code(text: &str) -> String {
    escape(text)
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{part}</code>")
            } else {
                part.to_owned()
            }
        })
        .collect()
}

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1250px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
code { background: #f3f3f3; padding: 0 .2em; border-radius: 3px; }
ol.verdict li { margin: .3em 0; font-size: 1.05em; }
p.quality, p.meta { color: #555; }
nav a { margin-right: 1em; }
iframe.flamegraph { width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
";

/// Put before inferno's script in each embedded flamegraph: a document loaded from a data URL
/// cannot put the zoom state in its URL, and inferno's attempt would throw on every click.
const HISTORY_SHIM: &str = "(function(){var replace=history.replaceState.bind(history);\
history.replaceState=function(){try{replace.apply(null,arguments);}catch(e){}};})();";

/// A flamegraph SVG made ready to live in a data URL.
fn embeddable(svg: &[u8]) -> Vec<u8> {
    const SCRIPT_START: &[u8] = b"<![CDATA[";
    match svg
        .windows(SCRIPT_START.len())
        .position(|w| w == SCRIPT_START)
    {
        Some(at) => {
            let at = at + SCRIPT_START.len();
            [&svg[..at], HISTORY_SHIM.as_bytes(), b"\n", &svg[at..]].concat()
        }
        None => svg.to_vec(),
    }
}

fn table(html: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    html.push_str("<table><tr>");
    for header in headers {
        let _ = write!(html, "<th>{}</th>", escape(header));
    }
    html.push_str("</tr>");
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            let _ = write!(html, "<td>{}</td>", escape(cell));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
}

/// The page. `flamegraphs` are the views' SVGs, `timeline` the memory chart if any.
pub fn report_html(
    summary: &Summary,
    flamegraphs: &[(View, Vec<u8>)],
    timeline: Option<&str>,
) -> String {
    let mut html = String::new();
    let title = format!("Profile of {}", summary.run.target);
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{}</title>\
         <style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    let _ = writeln!(
        html,
        "<p class=\"meta\">Command <code>{}</code>; {:.2} s; events {}; stopped: {}</p>",
        escape(&summary.run.command.join(" ")),
        summary.run.duration_secs,
        escape(
            &summary
                .run
                .events
                .iter()
                .map(|kind| kind.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        escape(&summary.run.stop_reason)
    );
    html.push_str("<section id=\"verdict\"><h2>Verdict</h2><ol class=\"verdict\">");
    for finding in &summary.verdict {
        let _ = write!(html, "<li>{}</li>", inline_code(&finding.text));
    }
    let _ = writeln!(
        html,
        "</ol><p class=\"quality\">{}</p></section>",
        escape(&summary.quality.text)
    );

    if !flamegraphs.is_empty() {
        html.push_str("<section id=\"flamegraphs\"><h2>Flamegraphs</h2><nav>");
        for (view, _) in flamegraphs {
            let _ = write!(
                html,
                "<a href=\"#view-{}\">{}</a>",
                view.name(),
                escape(view.label())
            );
        }
        html.push_str("</nav>");
        for (view, svg) in flamegraphs {
            // Each flamegraph is its own SVG document, with inferno's zoom and search script:
            // embedded as a data URL, it needs no file next to the page. All are laid out
            // (none hidden): inferno sizes its frames from the width it gets at load.
            let data = base64::engine::general_purpose::STANDARD.encode(embeddable(svg));
            let _ = write!(
                html,
                "<div class=\"view\" id=\"view-{}\"><h3>{}</h3><iframe class=\"flamegraph\" \
                 title=\"{}\" height=\"{}\" src=\"data:image/svg+xml;base64,{data}\"></iframe></div>",
                view.name(),
                escape(view.label()),
                escape(view.label()),
                svg_height(svg).unwrap_or(600) + 20
            );
        }
        html.push_str("</section>\n");
    }

    if let Some(timeline) = timeline {
        html.push_str("<section id=\"memory\"><h2>Memory</h2>");
        // The chart has no script and no ids: inline it as it is.
        let svg_start = timeline.find("<svg").unwrap_or(0);
        html.push_str(&timeline[svg_start..]);
        if let Some(memory) = &summary.memory {
            html.push_str("<h3>Leak candidates</h3>");
            let rows: Vec<Vec<String>> = memory
                .leak_candidates
                .iter()
                .map(|site| {
                    vec![
                        site.function.clone().unwrap_or_default(),
                        site.allocator.clone(),
                        site.bytes.to_string(),
                        site.count.to_string(),
                        format!("{:.1}", site.oldest_live_secs),
                    ]
                })
                .collect();
            table(
                &mut html,
                &["function", "via", "bytes", "allocations", "oldest (s)"],
                &rows,
            );
        }
        html.push_str("</section>\n");
    }

    if let Some(io) = &summary.io {
        html.push_str("<section id=\"io\"><h2>I/O</h2><h3>Files</h3>");
        let files: Vec<Vec<String>> = io
            .files
            .iter()
            .map(|f| {
                vec![
                    f.path.clone(),
                    f.kind.clone(),
                    format!("{:.0}", f.total_us),
                    f.read_bytes.to_string(),
                    f.write_bytes.to_string(),
                    f.fsyncs.to_string(),
                ]
            })
            .collect();
        table(
            &mut html,
            &["path", "kind", "time (µs)", "read", "written", "fsyncs"],
            &files,
        );
        html.push_str("<h3>System calls</h3>");
        let calls: Vec<Vec<String>> = io
            .syscalls
            .iter()
            .map(|c| {
                vec![
                    c.name.clone(),
                    c.count.to_string(),
                    c.bytes.to_string(),
                    format!("{:.0}", c.total_us),
                    format!("{:.1}", c.p50_us),
                    format!("{:.1}", c.p99_us),
                    format!("{:.1}", c.max_us),
                ]
            })
            .collect();
        table(
            &mut html,
            &[
                "call",
                "count",
                "bytes",
                "total (µs)",
                "p50 (µs)",
                "p99 (µs)",
                "max (µs)",
            ],
            &calls,
        );
        html.push_str("<h3>Block devices</h3>");
        let devices: Vec<Vec<String>> = io
            .devices
            .iter()
            .map(|d| {
                vec![
                    d.name.clone().unwrap_or_else(|| d.device.clone()),
                    d.operation.clone(),
                    d.requests.to_string(),
                    d.bytes.to_string(),
                    format!("{:.1}", d.avg_us),
                    format!("{:.1}", d.max_us),
                ]
            })
            .collect();
        table(
            &mut html,
            &[
                "device",
                "operation",
                "requests",
                "bytes",
                "mean (µs)",
                "max (µs)",
            ],
            &devices,
        );
        html.push_str("</section>\n");
    }

    if let Some(offcpu) = &summary.offcpu {
        html.push_str("<section id=\"scheduler\"><h2>Scheduler</h2><h3>Threads</h3>");
        let threads: Vec<Vec<String>> = offcpu
            .threads
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.tid.to_string(),
                    t.on_cpu_us
                        .map_or_else(|| "—".to_owned(), |us| us.to_string()),
                    t.blocked_us.to_string(),
                    t.runnable_us.to_string(),
                ]
            })
            .collect();
        table(
            &mut html,
            &[
                "thread",
                "tid",
                "on-CPU (µs)",
                "blocked (µs)",
                "runnable (µs)",
            ],
            &threads,
        );
        html.push_str("<h3>Run-queue latency</h3>");
        let run_queue: Vec<Vec<String>> = offcpu
            .run_queue
            .iter()
            .map(|rq| {
                vec![
                    rq.name.clone(),
                    rq.count.to_string(),
                    rq.p50_us.to_string(),
                    rq.p99_us.to_string(),
                    rq.max_us.to_string(),
                ]
            })
            .collect();
        table(
            &mut html,
            &["thread", "delays", "p50 (µs)", "p99 (µs)", "max (µs)"],
            &run_queue,
        );
        html.push_str("</section>\n");
    }
    html.push_str("</body></html>\n");
    html
}

/// The `height` attribute of an SVG's root element.
fn svg_height(svg: &[u8]) -> Option<u32> {
    let head = std::str::from_utf8(&svg[..svg.len().min(4096)]).ok()?;
    let root = &head[head.find("<svg")?..];
    let value = root.split("height=\"").nth(1)?.split('"').next()?;
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analysis::summarize,
        model::{EventKind, fixtures::sample_profile},
    };

    #[test]
    fn page_is_self_contained_and_escaped() {
        let mut profile = sample_profile();
        profile.run.command = vec!["demo".into(), "<script>".into()];
        let summary = summarize(&profile);
        let svg = b"<svg height=\"300\" xmlns=\"http://www.w3.org/2000/svg\"></svg>".to_vec();
        let html = report_html(&summary, &[(View::Kind(EventKind::Cpu), svg)], None);
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("&lt;script&gt;") && !html.contains("demo <script>"));
        assert!(html.contains("src=\"data:image/svg+xml;base64,"));
        assert!(html.contains("height=\"320\""));
        assert!(html.contains("<li>CPU: "), "the verdict opens the page");
        for external in ["src=\"http", "href=\"http", "<link", "@import"] {
            assert!(!html.contains(external), "no network reference: {external}");
        }
    }
}
