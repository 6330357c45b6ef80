//! SVG charts of reports (`delta report --svg`), drawn with plotters' SVG backend (no system
//! libraries, no fonts needed).

use std::path::Path;

use anyhow::{Result, anyhow};
use osdeploy_transport::report::UpdateCost;
use plotters::prelude::*;

const CHUNKS: RGBColor = RGBColor(160, 160, 160);
const DELTAS: RGBColor = RGBColor(31, 119, 180);

/// Bars of an update's bytes on the wire from each earlier release, chunks only beside deltas.
pub fn update_costs(path: &Path, version: &str, costs: &[UpdateCost]) -> Result<()> {
    let svg = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("{e}");
    let megabytes = |bytes: u64| bytes as f64 / 1e6;
    // Oldest release on the left.
    let costs: Vec<&UpdateCost> = costs.iter().rev().collect();
    let highest = costs.iter().map(|c| megabytes(c.chunks_only.transfer_bytes.max(c.with_deltas.transfer_bytes)));
    let top = highest.fold(0.001, f64::max) * 1.15;
    let root = SVGBackend::new(path, (160 + 120 * costs.len() as u32, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(svg)?;
    let last = costs.len() as f64 - 0.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Update to {version}: bytes on the wire"), ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..last, 0.0..top)
        .map_err(svg)?;
    let label = |x: &f64| {
        let i = x.round();
        let exact = (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < costs.len();
        if exact { costs[i as usize].version.clone() } else { String::new() }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(costs.len())
        .x_label_formatter(&label)
        .x_desc("from release")
        .y_desc("MB")
        .draw()
        .map_err(svg)?;
    let series = [(CHUNKS, "chunks only", -0.38), (DELTAS, "with per-file deltas", 0.02)];
    for (color, name, offset) in series {
        let value = |c: &UpdateCost| match offset < 0.0 {
            true => megabytes(c.chunks_only.transfer_bytes),
            false => megabytes(c.with_deltas.transfer_bytes),
        };
        let bars = costs.iter().enumerate().map(|(i, c)| {
            let x = i as f64 + offset;
            Rectangle::new([(x, 0.0), (x + 0.36, value(c))], color.filled())
        });
        chart
            .draw_series(bars)
            .map_err(svg)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        let values = costs.iter().enumerate().map(|(i, c)| {
            Text::new(format!("{:.2}", value(c)), (i as f64 + offset, value(c) + top * 0.01), ("sans-serif", 12))
        });
        chart.draw_series(values).map_err(svg)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(svg)?;
    root.present().map_err(svg)?;
    Ok(())
}
