//! PNG charts of a run (`output_dir/plots/`): the training loss (with the evaluation loss),
//! the learning rate, the gradient norm and every other evaluation metric against the
//! step, read from the log history, so a person can look instead of reading JSONL. Written
//! at the end of a run and by `host plot OUTPUT_DIR` (also while the run goes on).
//! `plots/index.json` lists each chart's series and their points.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// DejaVu Sans (Bitstream Vera license, host/assets/DejaVuSans-LICENSE.txt), so charts
/// have labels on a machine without fonts.
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FONT_NAME: &str = "sans-serif";

/// Series colours, in order of the series on a chart.
pub const COLOURS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44)];

/// One chart: a title and its (name, points) series.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Chart {
    pub file: String,
    pub title: String,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Log keys that are bookkeeping, not curves.
fn is_curve(key: &str) -> bool {
    !(matches!(key, "step" | "epoch" | "total_flos" | "num_input_tokens_seen" | "train_loss" | "loss")
        || key.ends_with("_runtime")
        || key.ends_with("_per_second"))
}

/// The charts the log history `entries` gives (a chart per quantity with any point).
pub fn charts(entries: &[serde_json::Value]) -> Vec<Chart> {
    let points = |key: &str| -> Vec<(f64, f64)> {
        entries
            .iter()
            .filter_map(|e| Some((e.get("step")?.as_f64()?, e.get(key)?.as_f64()?)))
            .filter(|(_, y)| y.is_finite())
            .collect()
    };
    let mut charts = Vec::new();
    let mut loss = vec![Series { name: "train".to_owned(), points: points("loss") }];
    loss.push(Series { name: "eval".to_owned(), points: points("eval_loss") });
    loss.retain(|s| !s.points.is_empty());
    if !loss.is_empty() {
        charts.push(Chart { file: "loss.png".to_owned(), title: "loss".to_owned(), series: loss });
    }
    let mut others: Vec<String> = entries
        .iter()
        .filter_map(|e| e.as_object())
        .flat_map(|o| o.keys().cloned())
        .filter(|k| is_curve(k) && k != "eval_loss")
        .collect();
    others.sort();
    others.dedup();
    // The training curves first, then the evaluation metrics by name.
    others.sort_by_key(|k| (k.starts_with("eval_"), k.clone()));
    for key in others {
        let series = vec![Series { name: key.clone(), points: points(&key) }];
        if !series[0].points.is_empty() {
            charts.push(Chart { file: format!("{key}.png"), title: key, series });
        }
    }
    charts
}

/// An axis label: plain for everyday magnitudes, scientific for learning rates and such.
/// A y tick: the axis's arithmetic leaves zero as a tiny remainder ("1.36e-20" on a
/// learning rate that decays to 0); anything that small next to the axis span is zero.
fn tick(v: f64, span: f64) -> String {
    number(if v.abs() < span.abs() * 1e-9 { 0.0 } else { v })
}

fn number(v: f64) -> String {
    if v == 0.0 || (0.01..10_000.0).contains(&v.abs()) {
        format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        format!("{v:.2e}")
    }
}

/// Draws `chart` as a PNG at `path`.
fn draw(chart: &Chart, path: &Path) -> Result<()> {
    let all = || chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1) = all().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
    let (mut y0, mut y1) = all().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    if x1 <= x0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let pad = if y1 > y0 { (y1 - y0) * 0.05 } else { y0.abs().max(1.0) * 0.05 };
    (y0, y1) = (y0 - pad, y1 + pad);
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut plot = ChartBuilder::on(&root)
        .margin(12)
        .caption(&chart.title, (FONT_NAME, 24))
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let span = y1 - y0;
    // One series has no legend: its name goes on the axis instead.
    let y_name = match chart.series.as_slice() {
        [only] => only.name.clone(),
        _ => String::new(),
    };
    plot.configure_mesh()
        .x_desc("step")
        .y_desc(y_name)
        .label_style((FONT_NAME, 14))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| tick(*v, span))
        .draw()?;
    for (series, colour) in chart.series.iter().zip(COLOURS) {
        let line = plot.draw_series(LineSeries::new(series.points.iter().copied(), colour.stroke_width(2)))?;
        line.label(&series.name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        if series.points.len() == 1 {
            plot.draw_series(series.points.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
        }
    }
    if chart.series.len() > 1 {
        plot.configure_series_labels()
            .label_font((FONT_NAME, 14))
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Writes the charts of the run in `output_dir` (its log_history.jsonl) to
/// `output_dir/plots/`; returns the folder.
pub fn write(output_dir: &Path) -> Result<PathBuf> {
    let history = output_dir.join("log_history.jsonl");
    let text = std::fs::read_to_string(&history)
        .with_context(|| format!("{} has no log_history.jsonl to plot", output_dir.display()))?;
    let entries: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    // A second registration of the same font is harmless; a failed one leaves no labels.
    let _ = plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT);
    let folder = output_dir.join("plots");
    std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
    let charts = charts(&entries);
    for chart in &charts {
        let path = folder.join(&chart.file);
        draw(chart, &path).map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))?;
    }
    crate::engine::output::write_text_atomically(
        &folder.join("index.json"),
        &(serde_json::to_string_pretty(&charts)? + "\n"),
    )?;
    Ok(folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_that_rounds_to_nothing_next_to_the_axis_is_zero() {
        assert_eq!(tick(1.36e-20, 5e-4), "0");
        assert_eq!(tick(2.5e-5, 5e-4), "2.50e-5");
        assert_eq!(tick(0.25, 1.0), "0.25");
    }

    #[test]
    fn the_history_becomes_one_chart_per_quantity() {
        let entries: Vec<serde_json::Value> = [
            r#"{"loss": 2.0, "grad_norm": 1.5, "learning_rate": 0.001, "epoch": 0.5, "step": 10}"#,
            r#"{"eval_loss": 1.8, "eval_accuracy": 0.6, "eval_runtime": 0.1, "epoch": 0.5, "step": 10}"#,
            r#"{"loss": 1.0, "grad_norm": "NaN", "learning_rate": 0.0005, "epoch": 1.0, "step": 20}"#,
            r#"{"train_runtime": 3.0, "train_loss": 1.5, "total_flos": 0.0, "step": 20}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        let charts = charts(&entries);
        let files: Vec<&str> = charts.iter().map(|c| c.file.as_str()).collect();
        assert_eq!(files, ["loss.png", "grad_norm.png", "learning_rate.png", "eval_accuracy.png"]);
        assert_eq!(charts[0].series[0].points, [(10.0, 2.0), (20.0, 1.0)]);
        assert_eq!(charts[0].series[1].points, [(10.0, 1.8)]);
        assert_eq!(charts[1].series[0].points, [(10.0, 1.5)], "a NaN is no point");
    }
}
