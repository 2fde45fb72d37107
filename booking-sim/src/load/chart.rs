//! The sweep's chart ([`super::sweep`]): payments/s of the stack and of the PostgreSQL ceiling
//! against concurrency (top), and the stack's p99 latency against concurrency (bottom), one
//! colour pair per flow. Two panels rather than a secondary axis: with both flows, six lines on
//! two y scales in one frame are hard to read.
//!
//! SVG through plotters' own SVG backend: text becomes `<text>` elements laid out by the viewer,
//! so no font files are read (plotters' `ttf` feature, and with it fontconfig and freetype, is
//! off). Text widths are then plotters' estimate; the layout leaves room for that.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

/// The ceiling lines' legend, after the flow's name.
pub const CEILING_LABEL: &str = "PostgreSQL ceiling (pgbench, same SQL)";

const WIDTH: u32 = 960;
const HEIGHT: u32 = 860;
const FONT: &str = "sans-serif";

/// One concurrency of one flow.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub concurrency: usize,
    pub payments_per_sec: f64,
    /// `None`: no payment finished.
    pub p99_ms: Option<f64>,
    /// `None`: not measured.
    pub ceiling_per_sec: Option<f64>,
}

/// One flow's points, in concurrency order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The flow's name, first in each of its legend labels.
    pub name: String,
    /// What the stack is, in its legend label (e.g. `3 replicas`).
    pub stack: String,
    pub points: Vec<Point>,
}

impl Series {
    /// The stack's legend label.
    pub fn stack_label(&self) -> String {
        format!("{}: the stack ({})", self.name, self.stack)
    }

    pub fn ceiling_label(&self) -> String {
        format!("{}: {CEILING_LABEL}", self.name)
    }

    pub fn p99_label(&self) -> String {
        format!("{}: p99 ProcessPayment latency", self.name)
    }
}

/// The stack's and the ceiling's colours of the `i`th flow: a dark and a light shade of one hue,
/// so that a flow's two lines read as a pair.
pub fn colours(i: usize) -> (RGBColor, RGBColor) {
    const PAIRS: [(RGBColor, RGBColor); 4] = [
        (RGBColor(0x1f, 0x4e, 0x9c), RGBColor(0x5f, 0xa8, 0xe8)),
        (RGBColor(0xc0, 0x39, 0x2b), RGBColor(0xf0, 0x8a, 0x5d)),
        (RGBColor(0x2e, 0x7d, 0x32), RGBColor(0x81, 0xc7, 0x84)),
        (RGBColor(0x6a, 0x1b, 0x9a), RGBColor(0xba, 0x68, 0xc8)),
    ];
    PAIRS[i % PAIRS.len()]
}

/// `#rrggbb`, as the SVG backend writes a colour.
pub fn hex(colour: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", colour.0, colour.1, colour.2)
}

/// The chart as SVG text; `note`: a line or more under the title.
pub fn svg(title: &str, note: &str, series: &[Series]) -> anyhow::Result<String> {
    let mut text = String::new();
    draw(
        SVGBackend::with_string(&mut text, (WIDTH, HEIGHT)).into_drawing_area(),
        title,
        note,
        series,
    )
    .map_err(|e| anyhow::anyhow!("drawing the chart: {e}"))?;
    Ok(text)
}

/// Writes the chart to `path` (SVG).
pub fn write(path: &Path, title: &str, note: &str, series: &[Series]) -> anyhow::Result<()> {
    let text = svg(title, note, series)?;
    std::fs::write(path, text).with_context(|| format!("writing the chart {}", path.display()))
}

/// The x axis: log2 of the concurrency, with room for a tick at each power of two.
fn x_axis(series: &[Series]) -> (std::ops::Range<f64>, usize) {
    let mut ticks: Vec<f64> = series
        .iter()
        .flat_map(|s| &s.points)
        .map(|p| log2(p.concurrency))
        .collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let low = ticks.first().copied().unwrap_or(0.0);
    let high = ticks.last().copied().unwrap_or(1.0);
    let pad = ((high - low) * 0.04).max(0.25);
    let (from, to) = (low - pad, high + pad);
    // As many labels as whole powers of two in the range: plotters then steps by one (a finer
    // step would need more), so every tick is a power of two.
    let powers = (to.floor() - from.ceil()) as usize + 1;
    (from..to, powers.max(1))
}

/// The concurrency at `log2` if that is a whole power of two, else nothing (no label).
fn x_label(log2: &f64) -> String {
    if (log2 - log2.round()).abs() < 1e-6 {
        format!("{}", 2f64.powf(log2.round()))
    } else {
        String::new()
    }
}

fn log2(concurrency: usize) -> f64 {
    (concurrency.max(1) as f64).log2()
}

/// 0 to `headroom` times the highest value (at least 1): the room above the lines is the
/// legend's (upper left), which would otherwise hide lines that level off up there.
fn y_top(values: impl Iterator<Item = f64>, headroom: f64) -> f64 {
    let top = values.filter(|v| v.is_finite()).fold(0.0_f64, f64::max);
    (top * headroom).max(1.0)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    note: &str,
    series: &[Series],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let body = root.titled(title, (FONT, 28).into_font().style(FontStyle::Bold))?;
    let note_font = (FONT, 16).into_font().color(&RGBColor(0x44, 0x44, 0x44));
    let mut note_lines = 0;
    for (i, line) in note.lines().enumerate() {
        body.draw_text(line, &note_font, (20, 20 * i as i32))?;
        note_lines += 1;
    }
    let body = body.margin(8 + 20 * note_lines, 8, 8, 16);
    let (top, bottom) = body.split_vertically(HEIGHT * 55 / 100);
    let (x_range, x_labels) = x_axis(series);
    let x_desc = "concurrent callers (pgbench clients for the ceiling), log2 scale";

    let rate_top = y_top(
        series
            .iter()
            .flat_map(|s| &s.points)
            .flat_map(|p| [Some(p.payments_per_sec), p.ceiling_per_sec])
            .flatten(),
        // Two legend rows per flow.
        1.15 + 0.1 * (2 * series.len()) as f64,
    );
    let mut rates = ChartBuilder::on(&top)
        .caption(
            "Throughput: payments/s (closed loop)",
            (FONT, 20).into_font(),
        )
        .margin(8)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.clone(), 0.0..rate_top)?;
    rates
        .configure_mesh()
        .x_labels(x_labels)
        .x_label_formatter(&x_label)
        .x_desc(x_desc)
        .y_desc("payments/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 17))
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let (dark, light) = colours(i);
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|p| (log2(p.concurrency), p.payments_per_sec))
            .collect();
        rates
            .draw_series(LineSeries::new(points.clone(), dark.stroke_width(3)))?
            .label(s.stack_label())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], dark.stroke_width(3)));
        rates.draw_series(
            points
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 4, dark.filled())),
        )?;
        let ceiling: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|p| Some((log2(p.concurrency), p.ceiling_per_sec?)))
            .collect();
        if !ceiling.is_empty() {
            rates
                .draw_series(DashedLineSeries::new(
                    ceiling.clone(),
                    10,
                    6,
                    light.stroke_width(3),
                ))?
                .label(s.ceiling_label())
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new([(0, 0), (9, 0)], light.stroke_width(3))
                        + PathElement::new([(15, 0), (24, 0)], light.stroke_width(3))
                });
            rates.draw_series(ceiling.iter().map(|&(x, y)| {
                EmptyElement::at((x, y)) + Rectangle::new([(-4, -4), (4, 4)], light.filled())
            }))?;
        }
    }
    rates
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xbb, 0xbb, 0xbb))
        .draw()?;

    let p99_top = y_top(
        series
            .iter()
            .flat_map(|s| &s.points)
            .filter_map(|p| p.p99_ms),
        1.15 + 0.1 * series.len() as f64,
    );
    let mut latency = ChartBuilder::on(&bottom)
        .caption(
            "Latency: p99 of ProcessPayment (waiting for the outcome), ms",
            (FONT, 20).into_font(),
        )
        .margin(8)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, 0.0..p99_top)?;
    latency
        .configure_mesh()
        .x_labels(x_labels)
        .x_label_formatter(&x_label)
        .x_desc(x_desc)
        .y_desc("p99 latency, ms")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 17))
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let (dark, _) = colours(i);
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|p| Some((log2(p.concurrency), p.p99_ms?)))
            .collect();
        latency
            .draw_series(LineSeries::new(points.clone(), dark.stroke_width(3)))?
            .label(s.p99_label())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], dark.stroke_width(3)));
        latency.draw_series(
            points
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 4, dark.filled())),
        )?;
    }
    latency
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xbb, 0xbb, 0xbb))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, scale: f64) -> Series {
        Series {
            name: name.to_owned(),
            stack: "3 replicas".to_owned(),
            points: [1, 2, 4, 8]
                .into_iter()
                .map(|c| Point {
                    concurrency: c,
                    payments_per_sec: 100.0 * scale * c as f64,
                    p99_ms: Some(5.0 + c as f64),
                    ceiling_per_sec: Some(200.0 * scale * c as f64),
                })
                .collect(),
        }
    }

    #[test]
    fn every_series_has_its_line_and_legend() {
        let all = [series("two_phase", 1.0), series("one_shot", 1.2)];
        let svg = svg("the title", "2 cores\nthe second line", &all).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in [
            "the title",
            "2 cores",
            "payments/s",
            "p99 latency, ms",
            CEILING_LABEL,
        ] {
            assert!(svg.contains(text), "{text:?} missing");
        }
        for (i, s) in all.iter().enumerate() {
            for label in [s.stack_label(), s.ceiling_label(), s.p99_label()] {
                assert!(svg.contains(&label), "{label:?} missing");
            }
            let (dark, light) = colours(i);
            for colour in [dark, light] {
                let stroke = format!("stroke=\"{}\"", hex(colour));
                assert!(
                    svg.lines()
                        .any(|l| l.contains("<polyline") && l.contains(&stroke)),
                    "no line in {stroke}"
                );
            }
        }
        // The x ticks are the concurrencies themselves (the SVG backend puts a text on its own
        // line).
        for tick in ["1", "2", "4", "8"] {
            assert!(svg.lines().any(|l| l.trim() == tick), "no tick {tick:?}");
        }
    }

    #[test]
    fn a_single_point_or_no_ceiling_still_draws() {
        let mut one = series("one_shot", 1.0);
        one.points.truncate(1);
        one.points[0].ceiling_per_sec = None;
        one.points[0].p99_ms = None;
        let svg = svg("t", "n", &[one]).unwrap();
        assert!(!svg.contains(CEILING_LABEL));
        assert!(svg.contains("one_shot: the stack"));
    }
}
