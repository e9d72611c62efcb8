//! Line charts as standalone SVG files, for `BENCHMARKS.md`: the benchmark binaries draw their own
//! figures, so a rerun brings them up to date with no other tool installed.

use std::fmt::Write as _;

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

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

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
fn label(value: f64) -> String {
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

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart {
    /// The chart as an SVG document.
    #[must_use]
    pub fn to_svg(&self) -> String {
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
        let y_max = (y_data_max / y_step).ceil().max(1.0) * y_step;

        let plot_width = WIDTH - LEFT - RIGHT;
        let plot_height = HEIGHT - TOP - BOTTOM;
        let scale_x = |x: f64| {
            let t = if self.log_x && x_min > 0.0 {
                (x.ln() - x_min.ln()) / (x_max.ln() - x_min.ln())
            } else {
                (x - x_min) / (x_max - x_min)
            };
            LEFT + t * plot_width
        };
        let scale_y = |y: f64| TOP + plot_height - y / y_max * plot_height;

        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(
            svg,
            r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
            LEFT + plot_width / 2.0,
            escape(&self.title)
        );
        // Grid and y ticks.
        let mut y = 0.0;
        while y <= y_max + y_step / 2.0 {
            let py = scale_y(y);
            let _ = write!(
                svg,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_width,
                LEFT - 6.0,
                py + 4.0,
                label(y)
            );
            y += y_step;
        }
        // X ticks: the data's own x values on a log axis, five even steps otherwise.
        let x_ticks: Vec<f64> = if self.log_x {
            xs.clone()
        } else {
            (0..=5)
                .map(|i| x_min + (x_max - x_min) * f64::from(i) / 5.0)
                .collect()
        };
        for x in x_ticks {
            let px = scale_x(x);
            let _ = write!(
                svg,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + plot_height,
                TOP + plot_height + 18.0,
                label(x)
            );
        }
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{plot_height}" fill="none" stroke="#444"/><text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(18 {}) rotate(-90)" text-anchor="middle">{}</text>"##,
            LEFT + plot_width / 2.0,
            HEIGHT - 12.0,
            escape(&self.x_label),
            TOP + plot_height / 2.0,
            escape(&self.y_label)
        );
        for (i, series) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let path: Vec<String> = series
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", scale_x(x), scale_y(y)))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for &(x, y) in &series.points {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                    scale_x(x),
                    scale_y(y)
                );
            }
            #[allow(clippy::cast_precision_loss)]
            let legend_y = TOP + 10.0 + 20.0 * i as f64;
            let legend_x = LEFT + plot_width + 15.0;
            let _ = write!(
                svg,
                r#"<line x1="{legend_x}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
                legend_x + 20.0,
                legend_x + 26.0,
                legend_y + 4.0,
                escape(&series.name)
            );
        }
        svg.push_str("</svg>\n");
        svg
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
        assert_eq!(label(10_000.0), "10k");
        assert_eq!(label(1_000_000.0), "1M");
        assert_eq!(label(0.25), "0.25");
        assert_eq!(label(12.0), "12");
    }

    #[test]
    fn a_chart_draws_every_series_and_escapes_its_text() {
        let chart = Chart {
            title: "a < b".into(),
            x_label: "tasks".into(),
            y_label: "ms".into(),
            log_x: true,
            series: vec![
                Series {
                    name: "inbox".into(),
                    points: vec![(1e4, 1.0), (1e5, 1.2), (1e6, 1.3)],
                },
                Series {
                    name: "overdue".into(),
                    points: vec![(1e4, 2.0), (1e5, 2.1), (1e6, 2.2)],
                },
            ],
        };
        let svg = chart.to_svg();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 6);
        assert!(svg.contains("a &lt; b"));
        assert!(svg.contains(">1M<"));
    }
}
