//! The chart: cold starts (log scale) against idle memory-time, the fixed keep-alives as a
//! curve, the adaptive ones as points, the priced ones as a curve per idle timeout, and the
//! target as a green box; SVG.

use crate::policy::Policy;
use crate::report::{fixed, TARGET_MEMORY_SHARE, TARGET_OF};
use crate::simulate::Outcome;
use crate::trace::Trace;

/// Draws the chart of `outcomes` into `path`.
pub fn draw(
    outcomes: &[Outcome],
    path: &std::path::Path,
    trace: &Trace,
    seed: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let point = |o: &Outcome| (o.idle_gb_h(), o.cold_percent().max(0.001));
    let fixed_points: Vec<((f64, f64), u64)> = outcomes
        .iter()
        .filter_map(|o| match o.policy {
            Policy::Fixed(m) => Some((point(o), m)),
            _ => None,
        })
        .collect();
    let adaptive_points: Vec<((f64, f64), u64)> = outcomes
        .iter()
        .filter_map(|o| match o.policy {
            Policy::Adaptive(m) => Some((point(o), m)),
            _ => None,
        })
        .collect();
    // The priced policies, one curve per idle timeout (the prices swept along it).
    let mut priced_caps: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| match o.policy {
            Policy::Priced(m, _) => Some(m),
            _ => None,
        })
        .collect();
    priced_caps.dedup();
    let priced_points = |cap: u64| -> Vec<((f64, f64), u64)> {
        outcomes
            .iter()
            .filter_map(|o| match o.policy {
                Policy::Priced(m, price) if m == cap => Some((point(o), price)),
                _ => None,
            })
            .collect()
    };
    let all: Vec<(f64, f64)> = outcomes.iter().map(point).collect();
    let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max) * 1.1;
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max) * 1.5;
    let y_min = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min) / 1.5;

    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = format!(
        "Keep-alive policies on a {} h synthetic trace ({} keys, {} requests, seed {seed})",
        trace.horizon.as_secs() / 3600,
        trace.functions.len(),
        trace.invocations.len()
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("idle memory-time, GB·h: memory × time alive without a request in flight")
        .y_desc("cold starts, % of requests (log scale)")
        .x_labels(12)
        .y_labels(12)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}%"))
        .draw()?;

    // The target: no more cold starts than fixed 10 min, at most 70% of its memory.
    if let Some(reference) = fixed(outcomes, TARGET_OF) {
        let (x, y) = (
            reference.idle_gb_h() * TARGET_MEMORY_SHARE,
            reference.cold_percent(),
        );
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y_min), (x, y)],
                GREEN.mix(0.12).filled(),
            )))?
            .label(format!(
                "target: cold starts ≤ fixed {TARGET_OF} min, idle memory ≤ {:.0}% of it",
                TARGET_MEMORY_SHARE * 100.0
            ))
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 16, y + 5)], GREEN.mix(0.3).filled())
            });
    }

    let blue = RGBColor(31, 119, 180);
    chart
        .draw_series(LineSeries::new(
            fixed_points.iter().map(|(p, _)| *p),
            blue.stroke_width(2),
        ))?
        .label("fixed keep-alive (idle_timeout)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], blue.stroke_width(2)));
    chart.draw_series(
        fixed_points
            .iter()
            .map(|(p, _)| Circle::new(*p, 4, blue.filled())),
    )?;
    chart.draw_series(fixed_points.iter().map(|(p, m)| {
        EmptyElement::at(*p)
            + Text::new(format!("{m} min"), (6, -18), ("sans-serif", 14).into_font())
    }))?;

    let orange = RGBColor(230, 85, 13);
    chart.draw_series(DashedLineSeries::new(
        adaptive_points.iter().map(|(p, _)| *p),
        6,
        4,
        orange.stroke_width(1),
    ))?;
    chart
        .draw_series(
            adaptive_points
                .iter()
                .map(|(p, _)| TriangleMarker::new(*p, 9, orange.filled())),
        )?
        .label("adaptive, per key (histogram), by idle_timeout (its cap)")
        .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 6, orange.filled()));
    chart.draw_series(adaptive_points.iter().map(|(p, m)| {
        EmptyElement::at(*p)
            + Text::new(
                format!("≤ {m} min"),
                (-58, 6),
                ("sans-serif", 14).into_font().color(&orange),
            )
    }))?;

    let purples = [
        RGBColor(117, 52, 170),
        RGBColor(200, 60, 160),
        RGBColor(40, 150, 90),
    ];
    for (i, cap) in priced_caps.iter().enumerate() {
        let color = purples[i % purples.len()];
        let points = priced_points(*cap);
        chart.draw_series(LineSeries::new(
            points.iter().map(|(p, _)| *p),
            color.stroke_width(2),
        ))?;
        chart
            .draw_series(points.iter().map(|(p, _)| {
                EmptyElement::at(*p) + Rectangle::new([(-5, -5), (5, 5)], color.filled())
            }))?
            .label(format!(
                "priced, across keys, idle_timeout {cap} min; by price (128 MB × minutes)"
            ))
            .legend(move |(x, y)| {
                Rectangle::new([(x + 3, y - 5), (x + 13, y + 5)], color.filled())
            });
        chart.draw_series(points.iter().map(|(p, price)| {
            EmptyElement::at(*p)
                + Text::new(
                    format!("{:.0}", *price as f64 / 128.0 / 60.0),
                    (8, 4),
                    ("sans-serif", 13).into_font().color(&color),
                )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
