//! Line charts as standalone SVG files, for `BENCHMARKS.md`: the benchmark binaries draw their own
//! figures with `plotters`, so a rerun brings them up to date with no other tool installed.
//!
//! Text is written as SVG `<text>` for the viewer's own sans-serif font: plotters is built with
//! neither of its font features (system fonts through `font-kit`, or a bundled font through
//! `ab_glyph`), so it only estimates text widths for its layout, which the fixed label areas below
//! do not depend on.

use std::ops::Range;
use std::path::Path;

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::coord::combinators::LogCoord;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One line of a chart: a name for the legend and its points, in x order.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend's label.
    pub name: String,
    /// `(x, y)` pairs; drawn in the order given.
    pub points: Vec<(f64, f64)>,
}

/// A line chart: every series against shared axes; y starts at 0.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Printed above the plot.
    pub title: String,
    /// Below the x axis.
    pub x_label: String,
    /// Beside the y axis.
    pub y_label: String,
    /// A logarithmic x axis (table sizes, worker counts that double), ticked at the data's x
    /// values; a linear one otherwise.
    pub log_x: bool,
    /// The lines.
    pub series: Vec<Series>,
}

const WIDTH: u32 = 720;
const HEIGHT: u32 = 420;
// Where the plot's frame is: room on the left for the y axis's ticks and description, on the
// right for the legend (beside the plot rather than over its lines), above for the title and
// below for the x axis's ticks and description.
const LEFT: u32 = 70;
const RIGHT: u32 = 200;
const TOP: u32 = 40;
const BOTTOM: u32 = 55;
/// Between the axes' descriptions and the edge of the image.
const MARGIN: u32 = 10;
const COLOURS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];
const GRID: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);
const FRAME: RGBColor = RGBColor(0x44, 0x44, 0x44);

/// A sans-serif font of `px` pixels in the SVG: plotters writes a font's size divided by 1.24
/// there.
fn font(px: f64) -> FontDesc<'static> {
    ("sans-serif", px * 1.24).into_font()
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// A tick label without trailing zeros: 10000 as `10k`, 1e6 as `1M`, 0.25 as `0.25`.
fn label(value: &f64) -> String {
    let value = *value;
    let abs = value.abs();
    if abs >= 1e6 && (value / 1e6).fract() == 0.0 {
        format!("{}M", value / 1e6)
    } else if abs >= 1e3 && (value / 1e3).fract() == 0.0 {
        format!("{}k", value / 1e3)
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// An axis ticked (and gridded) at the given values only: plotters' own ticks on a log axis are
/// powers of ten, which would leave 2, 4, 8 ... workers unlabelled. (Its `with_key_points` does the
/// same, but loses the tick label formatting of a floating-point axis.)
struct Ticked<R> {
    axis: R,
    ticks: Vec<f64>,
}

impl<R: Ranged<ValueType = f64>> Ranged for Ticked<R> {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.axis.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.axis.range()
    }

    fn axis_pixel_range(&self, limit: (i32, i32)) -> Range<i32> {
        self.axis.axis_pixel_range(limit)
    }
}

impl Chart {
    /// The chart as an SVG document.
    ///
    /// # Errors
    /// When plotters cannot draw it.
    pub fn to_svg(&self) -> anyhow::Result<String> {
        let points = || self.series.iter().flat_map(|s| s.points.iter().copied());
        let mut xs: Vec<f64> = points().map(|(x, _)| x).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        let (x_min, x_max) = match (xs.first(), xs.last()) {
            (Some(min), Some(max)) if max > min => (*min, *max),
            (Some(min), _) => (*min - 1.0, *min + 1.0),
            _ => (0.0, 1.0),
        };
        let y_data_max = points().map(|(_, y)| y).fold(0.0, f64::max);
        let y_step = nice_step(if y_data_max > 0.0 {
            y_data_max / 5.0
        } else {
            1.0
        });
        let y_steps = (y_data_max / y_step).ceil().max(1.0);
        let y_max = y_steps * y_step;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let y_ticks: Vec<f64> = (0..=y_steps as u32)
            .map(|i| f64::from(i) * y_step)
            .collect();

        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
            root.fill(&WHITE)?;
            let y = Ticked {
                axis: RangedCoordf64::from(0.0..y_max),
                ticks: y_ticks,
            };
            if self.log_x && x_min > 0.0 {
                let x = Ticked {
                    axis: LogCoord::from((x_min..x_max).log_scale()),
                    ticks: xs,
                };
                self.draw(&root, x, y)?;
            } else {
                let x = Ticked {
                    axis: RangedCoordf64::from(x_min..x_max),
                    ticks: (0..=5)
                        .map(|i| x_min + (x_max - x_min) * f64::from(i) / 5.0)
                        .collect(),
                };
                self.draw(&root, x, y)?;
            }
            root.present()?;
        }
        Ok(svg)
    }

    /// Writes the chart to `path` as an SVG file.
    ///
    /// # Errors
    /// When plotters cannot draw it or the file cannot be written.
    pub fn write(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_svg()?).with_context(|| format!("writing {}", path.display()))
    }

    fn draw<X: Ranged<ValueType = f64>>(
        &self,
        root: &DrawingArea<SVGBackend<'_>, Shift>,
        x: Ticked<X>,
        y: Ticked<RangedCoordf64>,
    ) -> anyhow::Result<()> {
        // Centred over the plot, not over the plot and its y axis as a caption would be.
        root.draw(&Text::new(
            self.title.as_str(),
            (i32::try_from(LEFT + (WIDTH - LEFT - RIGHT) / 2)?, 22),
            font(15.0)
                .into_text_style(root)
                .pos(Pos::new(HPos::Center, VPos::Bottom)),
        ))?;
        let (plot_side, legend_side) = root.split_horizontally(WIDTH - RIGHT);
        let mut chart = ChartBuilder::on(&plot_side)
            .margin_top(TOP)
            .margin_left(MARGIN)
            .margin_bottom(MARGIN)
            .margin_right(0)
            .x_label_area_size(BOTTOM - MARGIN)
            .y_label_area_size(LEFT - MARGIN)
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .bold_line_style(GRID)
            .light_line_style(TRANSPARENT)
            .axis_style(FRAME)
            .label_style(font(12.0))
            .axis_desc_style(font(12.0))
            .x_label_formatter(&label)
            .y_label_formatter(&label)
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .draw()?;
        let (x_range, y_range) = (chart.x_range(), chart.y_range());
        chart.plotting_area().draw(&Rectangle::new(
            [(x_range.start, y_range.start), (x_range.end, y_range.end)],
            FRAME,
        ))?;

        let plot_top = chart.plotting_area().get_pixel_range().1.start;
        for (i, series) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart.draw_series(LineSeries::new(
                series.points.iter().copied(),
                colour.stroke_width(2),
            ))?;
            chart.draw_series(
                series
                    .points
                    .iter()
                    .map(|&point| Circle::new(point, 3, colour.filled())),
            )?;
            let y = plot_top + 10 + 20 * i32::try_from(i)?;
            legend_side.draw(&PathElement::new(
                [(15, y), (35, y)],
                colour.stroke_width(2),
            ))?;
            legend_side.draw(&Text::new(
                series.name.as_str(),
                (41, y),
                font(12.0)
                    .into_text_style(&legend_side)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_labels_are_round() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(18.0), 20.0);
        assert_eq!(label(&10_000.0), "10k");
        assert_eq!(label(&1_000_000.0), "1M");
        assert_eq!(label(&0.25), "0.25");
        assert_eq!(label(&12.0), "12");
    }

    fn two_series(log_x: bool) -> Chart {
        Chart {
            title: "Reads & writes <by size>".into(),
            x_label: "tasks in the database".into(),
            y_label: "ms per call".into(),
            log_x,
            series: vec![
                Series {
                    name: "inbox page".into(),
                    points: vec![(1e4, 1.0), (1e5, 1.2), (1e6, 1.3)],
                },
                Series {
                    name: "overdue page".into(),
                    points: vec![(1e4, 2.0), (1e5, 2.1), (1e6, 2.2)],
                },
            ],
        }
    }

    /// The text content of every `<text>` element of `svg`.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|rest| {
                let body = &rest[rest.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_owned())
            })
            .collect()
    }

    #[test]
    fn a_chart_file_holds_its_title_axes_ticks_and_legend_as_text() -> anyhow::Result<()> {
        let path = std::env::temp_dir().join(format!("orkestra-plot-{}.svg", std::process::id()));
        two_series(true).write(&path)?;
        let svg = std::fs::read_to_string(&path)?;
        std::fs::remove_file(&path)?;

        assert!(svg.trim_start().starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        let texts = texts(&svg);
        for expected in [
            "Reads &amp; writes &lt;by size&gt;",
            "tasks in the database",
            "ms per call",
            "inbox page",
            "overdue page",
            // The log axis is ticked at the data's x values; y from 0 in round steps.
            "10k",
            "100k",
            "1M",
            "0",
            "0.5",
            "2.5",
        ] {
            assert!(
                texts.iter().any(|text| text == expected),
                "no <text> {expected:?} in {texts:?}"
            );
        }
        // Each series: its line and its legend key, and a dot per point.
        for colour in ["#1F77B4", "#D62728"] {
            let lines = format!(r#"stroke="{colour}" stroke-width="2""#);
            assert_eq!(svg.matches(&lines).count(), 2, "{svg}");
        }
        assert_eq!(svg.matches("<circle").count(), 6, "{svg}");
        Ok(())
    }

    #[test]
    fn a_linear_axis_is_ticked_in_five_even_steps() -> anyhow::Result<()> {
        let mut chart = two_series(false);
        for series in &mut chart.series {
            for (i, point) in series.points.iter_mut().enumerate() {
                point.0 = [0.0, 5.0, 10.0][i];
            }
        }
        let texts = texts(&chart.to_svg()?);
        for expected in ["0", "2", "4", "6", "8", "10"] {
            assert!(texts.iter().any(|text| text == expected), "{texts:?}");
        }
        Ok(())
    }
}
