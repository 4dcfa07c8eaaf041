//! SVG flamegraphs, drawn by inferno.

use inferno::flamegraph::{self, Options, Palette, color::BasicPalette};

use crate::model::EventKind;

/// A flamegraph to draw: one event kind, or the wall-clock view combining on- and off-CPU time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// One event kind.
    Kind(EventKind),
    /// On-CPU and off-CPU time together, in microseconds.
    Wall,
}

impl View {
    /// File name stem.
    pub fn name(self) -> &'static str {
        match self {
            View::Kind(kind) => kind.name(),
            View::Wall => "wall",
        }
    }

    /// Unit of the weights.
    pub fn unit(self) -> &'static str {
        match self {
            View::Kind(kind) => kind.unit(),
            View::Wall => "microseconds",
        }
    }

    /// Title prefix.
    pub fn label(self) -> &'static str {
        match self {
            View::Kind(EventKind::Cpu) => "CPU",
            View::Kind(EventKind::OffCpu) => "Off-CPU time",
            View::Kind(EventKind::Io) => "Time in I/O system calls",
            View::Kind(EventKind::Alloc) => "Bytes allocated",
            View::Kind(EventKind::InUse) => "Bytes in use at the end",
            View::Wall => "Wall-clock time (on- and off-CPU)",
        }
    }

    /// Colours that tell the views apart at a glance.
    fn palette(self) -> Palette {
        match self {
            View::Kind(EventKind::Cpu) => Palette::Basic(BasicPalette::Hot),
            View::Kind(EventKind::OffCpu) => Palette::Basic(BasicPalette::Blue),
            View::Kind(EventKind::Io) => Palette::Basic(BasicPalette::Io),
            View::Kind(EventKind::Alloc) => Palette::Basic(BasicPalette::Mem),
            View::Kind(EventKind::InUse) => Palette::Basic(BasicPalette::Green),
            View::Wall => Palette::Basic(BasicPalette::Aqua),
        }
    }
}

/// Renders folded `lines` as an SVG flamegraph titled `title`.
pub fn flamegraph_svg(
    lines: &[(String, u64)],
    view: View,
    title: &str,
) -> Result<Vec<u8>, std::io::Error> {
    let mut svg = Vec::new();
    if lines.iter().all(|(_, weight)| *weight == 0) {
        // inferno refuses input without weight; an SVG that says so beats a missing file.
        svg.extend_from_slice(empty_svg(title).as_bytes());
        return Ok(svg);
    }
    let mut options = Options::default();
    options.title = title.to_owned();
    options.count_name = view.unit().to_owned();
    options.colors = view.palette();
    // Colours from the function's name, not a random draw: a function keeps its colour across
    // graphs and runs, and rendering a saved profile again gives the same bytes.
    options.hash = true;
    let text: Vec<String> = lines
        .iter()
        .map(|(stack, weight)| format!("{stack} {weight}"))
        .collect();
    flamegraph::from_lines(&mut options, text.iter().map(String::as_str), &mut svg)
        .map_err(std::io::Error::other)?;
    Ok(svg)
}

pub(crate) fn empty_svg(title: &str) -> String {
    let title = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" width=\"1200\" height=\"60\" xmlns=\"http://www.w3.org/2000/svg\">\
         <text x=\"600\" y=\"24\" text-anchor=\"middle\" font-size=\"17\">{title}</text>\
         <text x=\"600\" y=\"48\" text-anchor=\"middle\" font-size=\"12\">no samples were \
         collected</text></svg>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_frames_and_handles_empty_input() {
        let lines = vec![("t;main;hot".to_owned(), 7), ("t;main;cold".to_owned(), 3)];
        let svg =
            String::from_utf8(flamegraph_svg(&lines, View::Kind(EventKind::Cpu), "CPU").unwrap())
                .unwrap();
        assert!(svg.contains("<svg") && svg.contains("hot") && svg.contains("cold"));
        assert!(svg.contains("7 samples"), "weight and unit in the tooltips");
        let empty = String::from_utf8(flamegraph_svg(&[], View::Wall, "a<b").unwrap()).unwrap();
        assert!(empty.contains("no samples") && empty.contains("a&lt;b"));
        let weightless = vec![("t;main;nap".to_owned(), 0)];
        let zero = flamegraph_svg(&weightless, View::Wall, "zero").unwrap();
        assert!(String::from_utf8(zero).unwrap().contains("no samples"));
    }
}
