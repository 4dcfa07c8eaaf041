//! The memory timeline: `memory-timeline.csv` and its chart (`memory-timeline.svg`, plotters).

use std::fmt::Write as _;

use crate::model::TimelineRow;

/// The memory timeline as CSV.
pub fn timeline_csv(rows: &[TimelineRow]) -> String {
    let mut csv = String::from("time_s,heap_live_bytes,rss_bytes,alloc_bytes_per_s\n");
    for row in rows {
        let _ = writeln!(
            csv,
            "{:.3},{},{},{:.0}",
            row.time_secs, row.heap_live_bytes, row.rss_bytes, row.alloc_bytes_per_sec
        );
    }
    csv
}

/// Columns of the chart's series: a day of rows (864 000) draws as fast as a minute's.
const CHART_BUCKETS: usize = 1000;

/// The points of one series, at most two per bucket of consecutive rows (its lowest and highest,
/// in time order): the line keeps every peak and dip a pixel column can show.
fn chart_points(
    rows: &[TimelineRow],
    value: impl Fn(&TimelineRow) -> f64,
    buckets: usize,
) -> Vec<(f64, f64)> {
    let per_bucket = rows.len().div_ceil(buckets.max(1)).max(1);
    if per_bucket <= 2 {
        return rows.iter().map(|row| (row.time_secs, value(row))).collect();
    }
    let mut points = Vec::with_capacity(2 * buckets);
    for bucket in rows.chunks(per_bucket) {
        let by_value = |a: &&TimelineRow, b: &&TimelineRow| value(a).total_cmp(&value(b));
        let (Some(low), Some(high)) = (
            bucket.iter().min_by(by_value),
            bucket.iter().max_by(by_value),
        ) else {
            continue;
        };
        let (first, second) = if low.time_secs <= high.time_secs {
            (low, high)
        } else {
            (high, low)
        };
        points.push((first.time_secs, value(first)));
        points.push((second.time_secs, value(second)));
    }
    points
}

/// The memory timeline as an SVG chart: heap in use and RSS in MiB over seconds, peaks marked.
pub fn timeline_svg(rows: &[TimelineRow], title: &str) -> std::io::Result<String> {
    use plotters::prelude::*;

    const MIB: f64 = 1024.0 * 1024.0;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let end = rows.last().map_or(1.0, |row| row.time_secs).max(0.1);
        let heap = |row: &TimelineRow| row.heap_live_bytes.max(0) as f64 / MIB;
        let rss = |row: &TimelineRow| row.rss_bytes as f64 / MIB;
        let top = rows
            .iter()
            .map(|row| heap(row).max(rss(row)))
            .fold(1.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..end, 0.0..top)
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .x_desc("time since start (s)")
            .y_desc("memory (MiB)")
            .draw()
            .map_err(chart_error)?;
        for (label, color, value) in [
            (
                "heap in use (allocated during the run)",
                RED,
                &heap as &dyn Fn(&TimelineRow) -> f64,
            ),
            ("RSS", BLUE, &rss),
        ] {
            chart
                .draw_series(LineSeries::new(
                    chart_points(rows, value, CHART_BUCKETS),
                    color.stroke_width(2),
                ))
                .map_err(chart_error)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            if let Some(row) = TimelineRow::peak(rows, value) {
                let at = (row.time_secs, value(row));
                chart
                    .draw_series([
                        Circle::new(at, 5, color.filled()).into_dyn(),
                        Text::new(
                            format!("peak {:.1} MiB at {:.1} s", at.1, at.0),
                            (at.0, at.1),
                            ("sans-serif", 14),
                        )
                        .into_dyn(),
                    ])
                    .map_err(chart_error)?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(chart_error)?;
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}

/// A plotters error as an I/O error: drawing into a string fails only as writing would.
fn chart_error(error: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::other(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_timelines_are_drawn_from_each_columns_extremes() {
        let rows: Vec<TimelineRow> = (0..100_000)
            .map(|i| TimelineRow {
                time_secs: f64::from(i) / 10.0,
                heap_live_bytes: if i == 54_321 {
                    1 << 30
                } else {
                    i64::from(i % 7)
                },
                rss_bytes: 0,
                alloc_bytes_per_sec: 0.0,
            })
            .collect();
        let points = chart_points(&rows, |row| row.heap_live_bytes as f64, 1000);
        assert!(points.len() <= 2000, "{}", points.len());
        assert!(
            points.contains(&(5432.1, f64::from(1 << 30))),
            "the spike is kept"
        );
        assert!(
            points.windows(2).all(|pair| pair[0].0 <= pair[1].0),
            "in time order"
        );
        let short = chart_points(&rows[..10], |row| row.heap_live_bytes as f64, 1000);
        assert_eq!(short.len(), 10);
    }

    #[test]
    fn timeline_renders_as_csv_and_chart() {
        let rows: Vec<TimelineRow> = (0..20)
            .map(|i| TimelineRow {
                time_secs: f64::from(i) / 10.0,
                heap_live_bytes: i64::from(i) << 20,
                rss_bytes: (30 + u64::from(i as u32)) << 20,
                alloc_bytes_per_sec: 1e6,
            })
            .collect();
        let csv = timeline_csv(&rows);
        assert_eq!(csv.lines().count(), 21);
        assert!(csv.starts_with("time_s,heap_live_bytes,rss_bytes,alloc_bytes_per_s\n0.000,0,"));
        assert_eq!(
            TimelineRow::peak(&rows, |r| r.heap_live_bytes as f64)
                .unwrap()
                .time_secs,
            1.9
        );
        let svg = timeline_svg(&rows, "Memory of demo").unwrap();
        assert!(svg.contains("<svg") && svg.contains("memory (MiB)"));
        assert!(svg.contains("peak 19.0 MiB at 1.9 s"), "heap peak marked");
        assert!(timeline_svg(&[], "empty").unwrap().contains("<svg"));
    }
}
