//! Curves of a run as one SVG file (drawn by `plotters`): one panel per series, stacked, each
//! with its own axes. `train` writes `OUTPUT_DIR/plot.svg`, `pipeline` one for all its stages.

use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use std::path::Path;

/// One panel: a line through `points` (x ascending), or dots where `dots`.
pub struct Panel {
    pub title: String,
    pub points: Vec<(f64, f64)>,
    pub dots: bool,
}

const WIDTH: u32 = 900;
const PANEL_HEIGHT: u32 = 220;

/// The SVG text of `panels` (those without a finite point are left out); `x_label` names the
/// shared x axis.
pub fn svg(title: &str, x_label: &str, panels: &[Panel]) -> Result<String> {
    let panels: Vec<&Panel> = panels
        .iter()
        .filter(|p| p.points.iter().any(|(x, y)| x.is_finite() && y.is_finite()))
        .collect();
    if panels.is_empty() {
        bail!("nothing to plot: no series has a finite point");
    }
    let mut out = String::new();
    {
        let height = 40 + PANEL_HEIGHT * panels.len() as u32;
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {title}: {e}");
        root.fill(&WHITE).map_err(e)?;
        let root = root.titled(title, ("sans-serif", 20)).map_err(e)?;
        let areas = root.split_evenly((panels.len(), 1));
        for (p, area) in panels.iter().zip(&areas) {
            let pts: Vec<(f64, f64)> = p
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            let (x0, x1) = bounds(pts.iter().map(|p| p.0));
            let (y0, y1) = bounds(pts.iter().map(|p| p.1));
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, ("sans-serif", 15))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(60)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(e)?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(e)?;
            if p.dots {
                chart
                    .draw_series(pts.iter().map(|&xy| Circle::new(xy, 4, BLUE.filled())))
                    .map_err(e)?;
            } else {
                chart.draw_series(LineSeries::new(pts, &BLUE)).map_err(e)?;
            }
        }
        root.present().map_err(e)?;
    }
    Ok(out)
}

/// `[min, max]` of finite values, widened when they are equal (an axis needs a span).
fn bounds(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if hi > lo {
        let pad = 0.05 * (hi - lo);
        (lo - pad, hi + pad)
    } else {
        (lo - 0.5, hi + 0.5)
    }
}

/// Writes [`svg`] to `path` atomically.
pub fn write(path: &Path, title: &str, x_label: &str, panels: &[Panel]) -> Result<()> {
    let text = svg(title, x_label, panels)?;
    super::npy::write_atomic(path, |w| {
        std::io::Write::write_all(w, text.as_bytes())?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_with_points_are_drawn_with_their_titles() {
        let line = Panel {
            title: "loss".into(),
            points: (1..=50).map(|s| (s as f64, 1.0 / s as f64)).collect(),
            dots: false,
        };
        let flat = Panel {
            title: "learning rate".into(),
            points: vec![(1.0, 1e-4), (50.0, 1e-4)],
            dots: false,
        };
        let empty = Panel {
            title: "never logged".into(),
            points: vec![(1.0, f64::NAN)],
            dots: true,
        };
        let s = svg("run", "step", &[line, flat, empty]).unwrap();
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("loss") && s.contains("learning rate"));
        assert!(!s.contains("never logged"));
        assert!(s.contains("<polyline"), "a line was drawn");
        assert!(svg("run", "step", &[]).is_err());
    }
}
