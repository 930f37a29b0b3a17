//! The admin console's numbers: this node's counters read back from its own Prometheus
//! exposition (the same numbers `/metrics` shows), and a short history of them sampled in
//! the background for the console's graph.
//!
//! Owns the reading of the exposition text and the history ring. Does not own what is
//! counted (see `telemetry`). The exposition is parsed by hand: it is the fixed, simple
//! text format our own exporter writes (`name{label="value",...} number` lines), and only
//! a few metric names are read from it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::telemetry;

/// One sample line of the exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// The samples of one rendering of `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    samples: Vec<Sample>,
}

/// `label="value"` pairs of a `{...}` body; `None` when malformed.
fn parse_labels(body: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (index, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break index,
                other => value.push(other),
            }
        };
        labels.push((name.trim().to_owned(), value));
        rest = after[end + 1..].trim_start_matches(',').trim();
    }
    Some(labels)
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
        None => (series, Vec::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

impl Metrics {
    /// Reads an exposition text; lines it cannot read are skipped.
    pub fn parse(text: &str) -> Metrics {
        Metrics {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// The sum of every series of `name` (0 when it was never recorded).
    pub fn total(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|sample| sample.name == name)
            .fold(0.0, |sum, sample| sum + sample.value)
    }

    /// The series of `name` summed by the value of `label`.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for sample in self.samples.iter().filter(|sample| sample.name == name) {
            if let Some((_, value)) = sample.labels.iter().find(|(key, _)| key == label) {
                *out.entry(value.clone()).or_insert(0.0) += sample.value;
            }
        }
        out
    }

    /// Events this node took in: HTTP ingest, broker sources and other cluster nodes.
    pub fn events_in(&self) -> f64 {
        self.total(telemetry::EVENTS_INGESTED)
            + self.total(telemetry::SOURCE_DISPATCHED)
            + self.total(telemetry::CLUSTER_RECEIVED)
    }
}

/// One point of the console's graph.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    /// Milliseconds since the Unix epoch.
    pub t: u64,
    pub events_in: f64,
    pub notifications_out: f64,
    pub connections: usize,
    pub slow_consumer_closes: f64,
}

/// How often the history is sampled, and how many samples it keeps (ten minutes).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
pub const HISTORY_POINTS: usize = 120;

/// The last [`HISTORY_POINTS`] samples.
#[derive(Debug, Default)]
pub struct History {
    points: Mutex<VecDeque<Point>>,
}

pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl History {
    pub fn record(&self, metrics: &Metrics, connections: usize) {
        let point = Point {
            t: unix_millis(SystemTime::now()),
            events_in: metrics.events_in(),
            notifications_out: metrics.total(telemetry::NOTIFICATIONS_SENT),
            connections,
            slow_consumer_closes: metrics.total(telemetry::SLOW_CONSUMER_CLOSES),
        };
        let mut points = self.points.lock().unwrap_or_else(PoisonError::into_inner);
        if points.len() == HISTORY_POINTS {
            points.pop_front();
        }
        points.push_back(point);
    }

    pub fn points(&self) -> Vec<Point> {
        self.points
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_exposition_format() {
        let text = "# TYPE eventgate_auth_failures_total counter\n\
            eventgate_auth_failures_total{reason=\"wrong_api_key\"} 3\n\
            eventgate_auth_failures_total{reason=\"wrong_host\"} 2\n\
            eventgate_source_lag{source=\"a \\\"q\\\",b\",x=\"y\"} 7\n\
            eventgate_events_ingested_total 10\n\
            eventgate_cluster_received_total 5\n\
            garbage line\n\
            eventgate_bad{reason=\"open 1\n";
        let metrics = Metrics::parse(text);
        assert_eq!(metrics.total(telemetry::AUTH_FAILURES), 5.0);
        assert_eq!(
            metrics.by_label(telemetry::AUTH_FAILURES, "reason")["wrong_api_key"],
            3.0
        );
        assert_eq!(
            metrics.by_label(telemetry::SOURCE_LAG, "source")["a \"q\",b"],
            7.0
        );
        assert_eq!(metrics.events_in(), 15.0);
        assert_eq!(metrics.total("eventgate_bad"), 0.0);
        assert!(metrics.total("nothing").is_sign_positive(), "0, not -0");
    }

    #[test]
    fn history_keeps_the_last_points() {
        let history = History::default();
        let metrics = Metrics::parse("eventgate_notifications_sent_total 4\n");
        for connections in 0..HISTORY_POINTS + 3 {
            history.record(&metrics, connections);
        }
        let points = history.points();
        assert_eq!(points.len(), HISTORY_POINTS);
        assert_eq!(points[0].connections, 3);
        assert_eq!(points[0].notifications_out, 4.0);
    }
}
