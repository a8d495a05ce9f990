//! The run as one SVG image: per workload, throughput over time (publish
//! solid, consume dashed, one colour per driver) and latency percentiles
//! (publish solid, end-to-end dashed, log scale).
//!
//! Written as plain SVG elements: a plotting crate would bring a font
//! stack to measure label text, and this chart needs a few lines and
//! labels, nothing more.

use std::fmt::Write as _;

use super::report::Report;
use super::runner::Percentiles;

const WIDTH: f64 = 1200.0;
const ROW: f64 = 250.0;
const PAD_LEFT: f64 = 70.0;
const PAD_TOP: f64 = 40.0;
const PLOT_H: f64 = 160.0;
const COLOURS: &[(&str, &str)] = &[
    ("ferry", "#1b7f3b"),
    ("rabbitmq", "#e07b00"),
    ("nats", "#2a5caa"),
];

fn colour(driver: &str) -> &'static str {
    COLOURS
        .iter()
        .find(|(d, _)| *d == driver)
        .map_or("#777777", |(_, c)| c)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn polyline(out: &mut String, points: &[(f64, f64)], colour: &str, dashed: bool) {
    if points.is_empty() {
        return;
    }
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8"{} points="{}"/>"#,
        if dashed {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        },
        pts.join(" ")
    );
}

fn text(out: &mut String, x: f64, y: f64, anchor: &str, size: u32, s: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="{size}">{}</text>"#,
        esc(s)
    );
}

fn frame(out: &mut String, x: f64, y: f64, w: f64, h: f64) {
    let _ = writeln!(
        out,
        "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"none\" stroke=\"#999\"/>"
    );
}

pub fn svg(report: &Report) -> String {
    let rows: Vec<&str> = report
        .workloads
        .iter()
        .map(|w| w.name.as_str())
        .filter(|w| {
            report
                .results
                .iter()
                .any(|r| r.workload == *w && r.measured().is_some())
        })
        .collect();
    let height = PAD_TOP + ROW * rows.len() as f64 + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" viewBox="0 0 {WIDTH} {height}">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    text(
        &mut out,
        WIDTH / 2.0,
        22.0,
        "middle",
        15,
        &format!(
            "ferry bench suite — {}; solid = publish, dashed = consume / end-to-end",
            report.started
        ),
    );
    let mut lx = WIDTH - 300.0;
    for (d, c) in COLOURS {
        if report.drivers.iter().any(|(n, _)| n == d) {
            let _ = writeln!(
                out,
                r#"<rect x="{lx}" y="28" width="14" height="6" fill="{c}"/>"#
            );
            text(&mut out, lx + 18.0, 35.0, "start", 11, d);
            lx += 90.0;
        }
    }
    let panel_w = (WIDTH - 2.0 * PAD_LEFT - 60.0) / 2.0;
    for (i, w) in rows.iter().enumerate() {
        let top = PAD_TOP + 30.0 + i as f64 * ROW;
        let runs: Vec<(&str, &super::runner::Measured)> = report
            .results
            .iter()
            .filter(|r| r.workload == *w)
            .filter_map(|r| r.measured().map(|m| (r.driver.as_str(), m)))
            .collect();
        // Left: throughput over time.
        let x0 = PAD_LEFT;
        let t_max = runs
            .iter()
            .flat_map(|(_, m)| m.series.last().map(|p| p.t_s))
            .fold(1e-3, f64::max);
        let y_max = nice_max(
            runs.iter()
                .flat_map(|(_, m)| m.series.iter())
                .map(|p| p.publish_per_s.max(p.consume_per_s))
                .fold(0.0, f64::max),
        );
        // The warm-up, not measured, shaded.
        let warmup = report
            .workloads
            .iter()
            .find(|x| x.name == *w)
            .map_or(0.0, |x| x.warmup_s);
        let _ = writeln!(
            out,
            "<rect x=\"{x0:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{PLOT_H:.1}\" fill=\"#eeeeee\"/>",
            (warmup / t_max * panel_w).min(panel_w)
        );
        frame(&mut out, x0, top, panel_w, PLOT_H);
        text(
            &mut out,
            x0 + panel_w / 2.0,
            top - 8.0,
            "middle",
            13,
            &format!("{w}: msg/s over time (s), warm-up shaded"),
        );
        text(
            &mut out,
            x0 - 5.0,
            top + 10.0,
            "end",
            10,
            &format!("{y_max:.0}"),
        );
        text(&mut out, x0 - 5.0, top + PLOT_H, "end", 10, "0");
        text(
            &mut out,
            x0 + panel_w,
            top + PLOT_H + 14.0,
            "end",
            10,
            &format!("{t_max:.1}"),
        );
        for (d, m) in &runs {
            let px = |t: f64| x0 + t / t_max * panel_w;
            let py = |v: f64| top + PLOT_H - v / y_max * PLOT_H;
            let publish: Vec<(f64, f64)> = m
                .series
                .iter()
                .map(|p| (px(p.t_s), py(p.publish_per_s)))
                .collect();
            let consume: Vec<(f64, f64)> = m
                .series
                .iter()
                .map(|p| (px(p.t_s), py(p.consume_per_s)))
                .collect();
            polyline(&mut out, &publish, colour(d), false);
            polyline(&mut out, &consume, colour(d), true);
        }
        // Right: latency percentiles on a log scale.
        let x1 = PAD_LEFT * 2.0 + 60.0 + panel_w;
        frame(&mut out, x1, top, panel_w, PLOT_H);
        text(
            &mut out,
            x1 + panel_w / 2.0,
            top - 8.0,
            "middle",
            13,
            &format!("{w}: latency ms (log) at p50 · p90 · p99 · p99.9 · max"),
        );
        let all: Vec<f64> = runs
            .iter()
            .flat_map(|(_, m)| [m.publish_latency.max_ms, m.end_to_end_latency.max_ms])
            .collect();
        let hi = nice_max(all.iter().copied().fold(0.1, f64::max))
            .log10()
            .ceil();
        let lo = -1.0f64; // 0.1 ms
                          // At least one decade, so an empty panel never divides by zero.
        let hi = hi.max(lo + 1.0);
        for decade in (lo as i32)..=(hi as i32) {
            let y = top + PLOT_H - (decade as f64 - lo) / (hi - lo) * PLOT_H;
            let _ = writeln!(
                out,
                "<line x1=\"{x1:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>",
                x1 + panel_w
            );
            text(
                &mut out,
                x1 - 5.0,
                y + 4.0,
                "end",
                10,
                &format!("{}", 10f64.powi(decade)),
            );
        }
        let labels = ["p50", "p90", "p99", "p99.9", "max"];
        for (k, l) in labels.iter().enumerate() {
            let x = x1 + (k as f64 + 0.5) / labels.len() as f64 * panel_w;
            text(&mut out, x, top + PLOT_H + 14.0, "middle", 10, l);
        }
        let curve = |p: &Percentiles| -> Vec<(f64, f64)> {
            if p.count == 0 {
                return Vec::new();
            }
            [p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms]
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    let x = x1 + (k as f64 + 0.5) / labels.len() as f64 * panel_w;
                    let y = top + PLOT_H - (v.max(0.1).log10() - lo) / (hi - lo) * PLOT_H;
                    (x, y)
                })
                .collect()
        };
        for (d, m) in &runs {
            polyline(&mut out, &curve(&m.publish_latency), colour(d), false);
            polyline(&mut out, &curve(&m.end_to_end_latency), colour(d), true);
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_bounds_are_round() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(43_000.0), 50_000.0);
        assert_eq!(nice_max(200.0), 200.0);
        assert_eq!(esc("a<b&c"), "a&lt;b&amp;c");
    }
}
