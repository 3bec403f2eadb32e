//! Line charts drawn on the server as SVG: numbers in, coordinates out,
//! with no script and no chart library. The template draws them
//! (`templates/plot.html`), escaping every label.

/// The drawing's size in SVG units; it scales to the page's width.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
/// Room for the axis labels.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// Most points drawn per series: more than the plot has pixels across, so
/// longer histories are thinned to this many before they are drawn.
pub const MAX_POINTS: usize = 600;

/// Colours told apart by most people, one per series in turn.
const COLOURS: [&str; 6] = [
    "#1b6ca8", "#d1495b", "#2a9d8f", "#e9a03b", "#6a4c93", "#5c5c5c",
];

pub struct Series {
    pub name: String,
    pub colour: &'static str,
    /// `x,y x,y …` in SVG units.
    pub points: String,
    /// Each point as a dot, for a series too short to read as a line
    /// (one sample draws no line at all); empty for longer ones.
    pub dots: Vec<(String, String)>,
}

/// Series with at most this many points are drawn with a dot on each, so
/// a service with a single sample still shows.
const MAX_DOTS: usize = 30;

pub struct Label {
    pub x: String,
    pub y: String,
    pub text: String,
    /// SVG `text-anchor`: labels at the ends of the x axis sit inside it.
    pub anchor: &'static str,
}

/// One chart, ready to draw.
pub struct Plot {
    pub title: String,
    pub width: f64,
    pub height: f64,
    pub left: f64,
    pub bottom: f64,
    pub right: f64,
    pub top: f64,
    pub series: Vec<Series>,
    pub y_labels: Vec<Label>,
    pub x_labels: Vec<Label>,
}

/// A line chart of `series` (each a name and `(unix seconds, value)`
/// points in time order), the y axis labelled with `fmt`.
pub fn line_chart(
    title: &str,
    series: Vec<(String, Vec<(i64, f64)>)>,
    fmt: impl Fn(f64) -> String,
) -> Plot {
    let all = || series.iter().flat_map(|(_, p)| p.iter());
    let t0 = all().map(|p| p.0).min().unwrap_or(0);
    let t1 = all().map(|p| p.0).max().unwrap_or(0).max(t0 + 1);
    let top_value = all().map(|p| p.1).fold(0.0_f64, f64::max);
    let y_max = if top_value > 0.0 {
        top_value * 1.1
    } else {
        1.0
    };
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |t: i64| LEFT + (t - t0) as f64 / (t1 - t0) as f64 * plot_w;
    let y_of = |v: f64| TOP + plot_h - v / y_max * plot_h;
    let drawn = series
        .iter()
        .zip(COLOURS.iter().cycle())
        .map(|((name, points), colour)| {
            let step = points.len().div_ceil(MAX_POINTS).max(1);
            let xy: Vec<(String, String)> = points
                .iter()
                .step_by(step)
                .map(|&(t, v)| (format!("{:.1}", x_of(t)), format!("{:.1}", y_of(v))))
                .collect();
            Series {
                name: name.clone(),
                colour,
                points: xy
                    .iter()
                    .map(|(x, y)| format!("{x},{y}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                dots: if xy.len() <= MAX_DOTS { xy } else { Vec::new() },
            }
        })
        .collect();
    let y_labels = (0..=2)
        .map(|i| {
            let v = y_max * f64::from(i) / 2.0;
            Label {
                x: format!("{:.1}", LEFT - 6.0),
                y: format!("{:.1}", y_of(v) + 4.0),
                text: fmt(v),
                anchor: "end",
            }
        })
        .collect();
    let x_labels = [(t0, "start"), (t1, "end")]
        .iter()
        .map(|&(t, anchor)| Label {
            anchor,
            x: format!("{:.1}", x_of(t)),
            y: format!("{:.1}", HEIGHT - 8.0),
            text: super::format::utc(t)
                .get(11..16)
                .unwrap_or_default()
                .to_owned(),
        })
        .collect();
    Plot {
        title: title.to_owned(),
        width: WIDTH,
        height: HEIGHT,
        left: LEFT,
        bottom: HEIGHT - BOTTOM,
        right: WIDTH - RIGHT,
        top: TOP,
        series: drawn,
        y_labels,
        x_labels,
    }
}

/// One sample of one service's history: when, its memory in bytes, and
/// how many times it had restarted.
pub struct Sample<'a> {
    pub service: &'a str,
    pub at: i64,
    pub memory: Option<i64>,
    pub restarts: Option<i64>,
}

/// A device's two charts: memory over time per service, and restarts over
/// time per service. Either is left out when no sample has its value.
pub fn service_history<'a>(samples: impl IntoIterator<Item = Sample<'a>>) -> Vec<Plot> {
    use std::collections::BTreeMap;
    let mut memory: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
    let mut restarts: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
    for s in samples {
        if let Some(m) = s.memory {
            memory.entry(s.service).or_default().push((s.at, m as f64));
        }
        if let Some(r) = s.restarts {
            restarts
                .entry(s.service)
                .or_default()
                .push((s.at, r as f64));
        }
    }
    let owned = |m: BTreeMap<&str, Vec<(i64, f64)>>| -> Vec<(String, Vec<(i64, f64)>)> {
        m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    };
    let mut plots = Vec::new();
    if !memory.is_empty() {
        plots.push(line_chart("Memory", owned(memory), |v| {
            super::format::bytes(v as i64)
        }));
    }
    if !restarts.is_empty() {
        plots.push(line_chart("Restarts", owned(restarts), |v| {
            format!("{v:.0}")
        }));
    }
    plots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_span_the_plot_and_the_highest_value_stays_inside() {
        let plot = line_chart(
            "memory",
            vec![(
                "web".to_owned(),
                vec![(100, 0.0), (200, 50.0), (300, 100.0)],
            )],
            |v| format!("{v:.0}"),
        );
        let points: Vec<(f64, f64)> = plot.series[0]
            .points
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(points.first().unwrap().0, LEFT);
        assert_eq!(points.last().unwrap().0, WIDTH - RIGHT);
        // Zero sits on the x axis; the top value below the top edge.
        assert_eq!(points[0].1, HEIGHT - BOTTOM);
        assert!(points[2].1 > TOP && points[2].1 < points[1].1);
        assert_eq!(plot.y_labels[0].text, "0");
        // Few points: each gets a dot, so even one sample shows.
        assert_eq!(plot.series[0].dots.len(), 3);
    }

    #[test]
    fn a_devices_history_becomes_a_memory_and_a_restarts_chart() {
        let sample = |service, at, memory, restarts| Sample {
            service,
            at,
            memory,
            restarts,
        };
        let plots = service_history([
            sample("web", 10, Some(1 << 20), Some(0)),
            sample("db", 10, Some(2 << 20), None),
            sample("web", 20, Some(3 << 20), Some(1)),
        ]);
        let titles: Vec<&str> = plots.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(titles, ["Memory", "Restarts"]);
        let names: Vec<&str> = plots[0].series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        assert_eq!(plots[0].y_labels[2].text, "3.3 MiB");
        assert_eq!(plots[1].series.len(), 1);
        assert!(service_history([sample("web", 1, None, None)]).is_empty());
    }

    #[test]
    fn long_histories_are_thinned() {
        let many: Vec<(i64, f64)> = (0..5000).map(|i| (i, 1.0)).collect();
        let plot = line_chart("x", vec![("a".to_owned(), many)], |v| v.to_string());
        assert!(plot.series[0].points.split(' ').count() <= MAX_POINTS);
        assert!(plot.series[0].dots.is_empty());
    }
}
