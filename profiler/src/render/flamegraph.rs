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
    let text: Vec<String> = drawn_lines(lines, options.min_width)
        .into_iter()
        .map(|(stack, weight)| format!("{stack} {weight}"))
        .collect();
    flamegraph::from_lines(&mut options, text.iter().map(String::as_str), &mut svg)
        .map_err(std::io::Error::other)?;
    Ok(svg)
}

/// `lines` cut to what inferno draws: a frame narrower than `min_width` percent of the whole
/// is not drawn, nor anything above it, so each stack ends below its first such frame, and the
/// stacks so cut that are equal are merged (their weight stays, in the frames below). inferno
/// itself keeps every frame of the merged stacks before it drops the narrow ones: for a profile
/// of a million distinct stacks that was gigabytes, for a picture of a few thousand frames.
///
/// Frames are merged as inferno merges them, over the lines (`stack weight`, trimmed) in byte
/// order: a frame's weight is that of the run of consecutive lines that share it and
/// everything below it.
fn drawn_lines(lines: &[(String, u64)], min_width: f64) -> Vec<(&str, u64)> {
    let mut order: Vec<(&str, u64)> = lines
        .iter()
        .map(|(stack, weight)| (stack.trim_start(), *weight))
        .collect();
    order.sort_unstable_by(|a, b| line_order(*a, *b));
    let total: u64 = order.iter().map(|(_, weight)| *weight).sum();
    // inferno's own test (it drops a frame below this), to the same floating-point result.
    let narrowest = min_width / (100.0 / total as f64);
    let drawn = |weight: u64| weight as f64 >= narrowest;
    // Frames drawn per line, as differences: a drawn frame adds one to each line of its run.
    let mut depth_change = vec![0i64; order.len() + 1];
    // The frames of the current line's stack still open: (weight so far, first line).
    let mut open: Vec<(u64, usize)> = Vec::new();
    let mut close = |open: &mut Vec<(u64, usize)>, depth: usize, at: usize| {
        while open.len() > depth {
            let (weight, first) = open.pop().expect("deeper than depth");
            if drawn(weight) {
                depth_change[first] += 1;
                depth_change[at] -= 1;
            }
            if let Some(parent) = open.last_mut() {
                parent.0 += weight;
            }
        }
    };
    let mut previous = "";
    for (at, &(stack, weight)) in order.iter().enumerate() {
        let shared = previous
            .split(';')
            .zip(stack.split(';'))
            .take_while(|(a, b)| a == b)
            .count();
        let shared = if at == 0 { 0 } else { shared };
        close(&mut open, shared, at);
        let depth = stack.split(';').count();
        open.extend(std::iter::repeat_n((0, at), depth - shared));
        if let Some(leaf) = open.last_mut() {
            leaf.0 += weight;
        }
        previous = stack;
    }
    close(&mut open, 0, order.len());
    let mut merged: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut frames = 0i64;
    for (at, &(stack, weight)) in order.iter().enumerate() {
        frames += depth_change[at];
        // At least the root, so the whole keeps its weight (inferno does not draw it either).
        let keep = usize::try_from(frames).unwrap_or(0).max(1);
        let end = stack
            .match_indices(';')
            .nth(keep - 1)
            .map_or(stack.len(), |(end, _)| end);
        // A line inferno would skip (an empty root) is left whole, as it was.
        let drawn = Some(&stack[..end])
            .filter(|cut| !cut.trim().is_empty())
            .unwrap_or(stack);
        *merged.entry(drawn).or_default() += weight;
    }
    // In no order: inferno sorts them (one string each, so the picture is the same).
    merged.into_iter().collect()
}

/// The order of folded lines `stack weight` as text, which is inferno's.
fn line_order(a: (&str, u64), b: (&str, u64)) -> std::cmp::Ordering {
    let decimal = |mut n: u64| {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return (digits, at);
            }
        }
    };
    // The stacks decide, but where one is the other's start.
    let (a_stack, b_stack) = (a.0.as_bytes(), b.0.as_bytes());
    let common = a_stack.len().min(b_stack.len());
    let order = a_stack[..common].cmp(&b_stack[..common]);
    if order.is_ne() {
        return order;
    }
    let ((a_digits, a_at), (b_digits, b_at)) = (decimal(a.1), decimal(b.1));
    let a_rest = a_stack[common..]
        .iter()
        .chain(b" ")
        .chain(&a_digits[a_at..]);
    let b_rest = b_stack[common..]
        .iter()
        .chain(b" ")
        .chain(&b_digits[b_at..]);
    a_rest.cmp(b_rest)
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

    #[test]
    fn lines_are_ordered_as_their_text() {
        let lines = [
            ("t;f", 6),
            ("t;f", 60),
            ("t;f (x)", 9000),
            ("t;f;g", 6),
            ("t;f0", 1),
            ("t", 18_446_744_073_709_551_615),
            ("t", 0),
            ("", 5),
        ];
        for a in lines {
            for b in lines {
                let text = |(stack, weight): (&str, u64)| format!("{stack} {weight}");
                assert_eq!(line_order(a, b), text(a).cmp(&text(b)), "{a:?} {b:?}");
            }
        }
    }

    /// inferno's SVG of `lines` as they are, frames narrower than `min_width` percent left out.
    fn render(lines: &[(&str, u64)], min_width: f64) -> Vec<u8> {
        let text: Vec<String> = lines.iter().map(|(s, w)| format!("{s} {w}")).collect();
        let mut options = Options::default();
        options.min_width = min_width;
        options.hash = true;
        let mut svg = Vec::new();
        flamegraph::from_lines(&mut options, text.iter().map(String::as_str), &mut svg).unwrap();
        svg
    }

    /// The `<title>` of every frame drawn, sorted: name, weight and share.
    fn frame_titles(svg: &[u8]) -> Vec<String> {
        let svg = String::from_utf8(svg.to_vec()).unwrap();
        let mut titles: Vec<String> = svg
            .split("<title>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</title>").map(|(t, _)| t.to_owned()))
            .collect();
        titles.sort();
        titles
    }

    #[test]
    fn narrow_frames_are_cut_before_inferno_with_the_same_picture() {
        // Many distinct stacks, a few heavy: most of the tree is too narrow to draw.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut merged = std::collections::BTreeMap::new();
        for i in 0..20_000 {
            let depth = 1 + (next() % 14) as usize;
            let mut stack = String::from("t");
            for _ in 0..depth {
                stack.push(';');
                stack.push(char::from(b'a' + (next() % 6) as u8));
            }
            let weight = if i % 500 == 0 { 2_000 } else { 1 + next() % 3 };
            *merged.entry(stack).or_insert(0) += weight;
        }
        let lines: Vec<(String, u64)> = merged.into_iter().collect();
        let drawn = drawn_lines(&lines, Options::default().min_width);
        assert!(
            drawn.len() * 4 < lines.len(),
            "{} of {} lines left",
            drawn.len(),
            lines.len()
        );
        let total = |lines: &[(&str, u64)]| lines.iter().map(|(_, w)| w).sum::<u64>();
        let all: Vec<(&str, u64)> = lines.iter().map(|(s, w)| (s.as_str(), *w)).collect();
        assert_eq!(total(&drawn), total(&all), "no weight lost");
        let min_width = Options::default().min_width;
        let (whole, cut) = (render(&all, min_width), render(&drawn, min_width));
        assert!(frame_titles(&whole).len() > 100);
        assert_eq!(frame_titles(&whole), frame_titles(&cut));

        // inferno orders whole lines: `f (x) 9000` comes between `f 6` and `f;g 6`' stacks
        // only by stack, so `f` is one run of 12, drawn, not two of 6.
        let lines = vec![
            ("t;f".to_owned(), 6),
            ("t;f (x)".to_owned(), 9000),
            ("t;f;g".to_owned(), 6),
            ("t;h".to_owned(), 100_000),
        ];
        let narrow = 100.0 * 10.0 / 109_012.0;
        let drawn = drawn_lines(&lines, narrow);
        assert!(drawn.contains(&("t;f", 12)), "{drawn:?}");
        let all: Vec<(&str, u64)> = lines.iter().map(|(s, w)| (s.as_str(), *w)).collect();
        assert_eq!(
            frame_titles(&render(&all, narrow)),
            frame_titles(&render(&drawn, narrow))
        );
        // A line with an empty root is left as it is.
        let empty_root = vec![(";a;b".to_owned(), 1), ("t;c".to_owned(), 1_000_000)];
        assert!(drawn_lines(&empty_root, 0.01).contains(&(";a;b", 1)));
    }
}
