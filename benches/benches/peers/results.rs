//! The measures over the repetitions, the targets run by run, and the JSON and SVG output.

use super::*;

/// The values of one measure over the repetitions.
#[derive(Debug, Default, Clone)]
pub(crate) struct Series(pub(crate) Vec<f64>);

impl Series {
    pub(crate) fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    pub(crate) fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }
    pub(crate) fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
    pub(crate) fn json(&self) -> Value {
        json!({"median": self.median(), "min": self.min(), "max": self.max(), "runs": self.0})
    }
}

/// Every measure of every broker, by name.
#[derive(Debug, Default)]
pub(crate) struct Results(BTreeMap<(String, &'static str), Series>);

impl Results {
    pub(crate) fn add(&mut self, who: &str, measure: &'static str, v: f64) {
        self.0
            .entry((who.to_string(), measure))
            .or_default()
            .0
            .push(v);
    }
    pub(crate) fn get(&self, who: &str, measure: &'static str) -> Option<&Series> {
        self.0.get(&(who.to_string(), measure))
    }
}

/// What each measure is, its unit and whether more is better.
pub(crate) const MEASURES: &[(&str, &str, &str, bool)] = &[
    ("fan_in", "fan-in 4 -> 1, QoS0", "M msg/s", true),
    ("fan_in_lost", "  lost", "msgs", false),
    ("fan_in_cpu", "  broker CPU", "us/msg", false),
    ("fan_out", "fan-out 1 -> 4, QoS0", "M msg/s", true),
    ("fan_out_lost", "  lost", "msgs", false),
    ("fan_out_cpu", "  broker CPU", "us/msg", false),
    ("queue", "queue group of 3, QoS0", "M msg/s", true),
    ("queue_lost", "  lost", "msgs", false),
    ("queue_cpu", "  broker CPU", "us/msg", false),
    ("p50", "latency p50 @10k msg/s", "us", false),
    ("p99", "latency p99", "us", false),
    ("p999", "latency p99.9", "us", false),
    ("qos1", "QoS1 1 -> 1, acked", "M msg/s", true),
    ("qos1_lost", "  lost", "msgs", false),
    ("idle_mb", "1,000 idle connections", "MB RSS", false),
    ("idle_kib_per_conn", "  per connection", "KiB", false),
    ("start_ms", "start to accepting", "ms", false),
    ("stop_ms", "SIGTERM to exit, after the runs", "ms", false),
];

pub(crate) fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub(crate) fn cell(s: Option<&Series>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.0.len() == 1 || s.min() == s.max() => fmt(s.median()),
        Some(s) => format!("{} ({}-{})", fmt(s.median()), fmt(s.min()), fmt(s.max())),
    }
}

/// The targets of DESIGN.md section 10 and the issue, checked run by run: (what, met in
/// how many runs, of how many).
pub(crate) fn targets(r: &Results, reps: usize) -> Vec<(String, usize, usize)> {
    let de = |m| r.get("daemoneye", m);
    let nats = |m| r.get("nats-server", m);
    let floor = r.get("relay", "p50");
    let mut out = Vec::new();
    let per_run = |f: &dyn Fn(usize) -> Option<bool>| -> (usize, usize) {
        let mut met = 0;
        let mut of = 0;
        for i in 0..reps {
            if let Some(ok) = f(i) {
                of += 1;
                met += usize::from(ok);
            }
        }
        (met, of)
    };
    let at = |s: Option<&Series>, i: usize| s.and_then(|s| s.0.get(i).copied());
    for (m, label) in [
        ("fan_in", "fan-in >= 1.1x nats-server, 0 lost"),
        ("fan_out", "fan-out >= 1.1x nats-server, 0 lost"),
        ("queue", "queue group >= 1.1x nats-server, 0 lost"),
    ] {
        let lost: &'static str = match m {
            "fan_in" => "fan_in_lost",
            "fan_out" => "fan_out_lost",
            _ => "queue_lost",
        };
        let (met, of) =
            per_run(&|i| Some(at(de(m), i)? >= 1.1 * at(nats(m), i)? && at(de(lost), i)? == 0.0));
        out.push((label.to_string(), met, of));
    }
    let (met, of) = per_run(&|i| Some(at(de("fan_in_cpu"), i)? <= 0.5));
    out.push(("broker CPU <= 0.5 us/msg (fan-in)".into(), met, of));
    let (met, of) = per_run(&|i| Some(at(de("p50"), i)? <= 1.5 * at(floor, i)?));
    out.push(("p50 <= 1.5x the relay floor".into(), met, of));
    let (met, of) = per_run(&|i| Some(at(de("p99"), i)? < at(nats("p99"), i)?));
    out.push(("p99 < nats-server's p99".into(), met, of));
    let (met, of) = per_run(&|i| Some(at(de("idle_mb"), i)? < 20.0));
    out.push(("1,000 idle connections < 20 MB".into(), met, of));
    out
}

pub(crate) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo.lines().next().unwrap_or("").to_string();
    json!({
        "cpu": model,
        "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory": mem,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
}

/// The latency distribution of a run as (percentile, microseconds) points for a CDF.
pub(crate) fn cdf(lat: &[u64]) -> Vec<(f64, f64)> {
    let mut v = lat.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return Vec::new();
    }
    // Every percent to 90, every tenth to 99, every hundredth above.
    let steps = (0..90)
        .map(|i| f64::from(i) / 100.0)
        .chain((900..990).map(|i| f64::from(i) / 1000.0))
        .chain((9900..=10000).map(|i| f64::from(i) / 10000.0));
    let mut points = Vec::new();
    for q in steps {
        let idx = ((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1);
        points.push(((q * 10000.0).round() / 100.0, v[idx] as f64 / 1000.0));
    }
    points
}

/// Throughput bars and the latency CDF, side by side.
pub(crate) fn svg(
    r: &Results,
    cdfs: &BTreeMap<String, Vec<(f64, f64)>>,
    names: &[String],
) -> String {
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#7f7f7f"];
    let color = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .map_or(colors[3], |i| colors[i.min(2)])
    };
    let mut s = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"960\" height=\"400\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"960\" height=\"400\" fill=\"white\"/>\n",
    );
    // Bars.
    let rows = [
        ("fan_in", "fan-in 4->1"),
        ("fan_out", "fan-out 1->4"),
        ("queue", "queue group 3"),
        ("qos1", "QoS1 1->1"),
    ];
    let top = rows
        .iter()
        .flat_map(|(m, _)| {
            names
                .iter()
                .filter_map(move |n| r.get(n, m).map(Series::median))
        })
        .fold(0.0f64, f64::max)
        .max(0.1);
    let (x0, y0, w, h) = (50.0, 40.0, 400.0, 300.0);
    s += &format!(
        "<text x=\"{x0}\" y=\"20\" font-size=\"14\">Delivered, M msg/s (median of runs)</text>\n"
    );
    s += &format!(
        "<line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        y0 + h,
        x0 + w,
        y0 + h
    );
    let group_w = w / rows.len() as f64;
    let bar_w = group_w * 0.8 / names.len() as f64;
    for (g, (m, label)) in rows.iter().enumerate() {
        let gx = x0 + g as f64 * group_w + group_w * 0.1;
        for (i, n) in names.iter().enumerate() {
            let Some(v) = r.get(n, m).map(Series::median) else {
                continue;
            };
            let bh = h * v / top;
            let bx = gx + i as f64 * bar_w;
            s += &format!(
                "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">{:.2}</text>\n",
                y0 + h - bh,
                bar_w - 2.0,
                color(n),
                bx + bar_w / 2.0 - 1.0,
                y0 + h - bh - 3.0,
                v
            );
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            gx + group_w * 0.4,
            y0 + h + 16.0
        );
    }
    // Legend.
    for (i, n) in names
        .iter()
        .chain(std::iter::once(&"relay floor".to_string()))
        .enumerate()
    {
        let lx = x0 + i as f64 * 120.0;
        s += &format!(
            "<rect x=\"{lx}\" y=\"375\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"386\">{n}</text>\n",
            if n == "relay floor" {
                colors[3]
            } else {
                color(n)
            },
            lx + 16.0
        );
    }
    // CDF: x is log10 of microseconds from 1 us to 100 ms.
    let (cx0, cy0, cw, ch) = (540.0, 40.0, 390.0, 300.0);
    s += &format!(
        "<text x=\"{cx0}\" y=\"20\" font-size=\"14\">One-way latency at 10k msg/s by percentile (last run)</text>\n"
    );
    s += &format!(
        "<rect x=\"{cx0}\" y=\"{cy0}\" width=\"{cw}\" height=\"{ch}\" fill=\"none\" stroke=\"black\"/>\n"
    );
    let lx = |us: f64| cx0 + cw * (us.max(1.0).log10() / 5.0).min(1.0);
    // y is the tail's scale: 0, 90, 99, 99.9 and 99.99 percent equally spaced.
    let ly = |pct: f64| {
        let nines = -(1.0 - pct / 100.0).max(1e-4).log10();
        cy0 + ch - ch * nines / 4.0
    };
    for (e, label) in [
        (0, "1us"),
        (1, "10us"),
        (2, "100us"),
        (3, "1ms"),
        (4, "10ms"),
        (5, "100ms"),
    ] {
        let x = lx(10f64.powi(e));
        s += &format!(
            "<line x1=\"{x:.1}\" y1=\"{cy0}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            cy0 + ch,
            cy0 + ch + 16.0
        );
    }
    for pct in [0.0, 50.0, 90.0, 99.0, 99.9, 99.99] {
        let y = ly(pct);
        s += &format!(
            "<line x1=\"{cx0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{pct}%</text>\n",
            cx0 + cw,
            cx0 - 4.0,
            y + 4.0
        );
    }
    for (n, points) in cdfs {
        let path: Vec<String> = points
            .iter()
            .map(|(pct, us)| format!("{:.1},{:.1}", lx(*us), ly(*pct)))
            .collect();
        let c = if n == "relay" { colors[3] } else { color(n) };
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            path.join(" ")
        );
    }
    s += "</svg>\n";
    s
}
