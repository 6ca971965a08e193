//! The last half hour of what the live page draws, one point per sample: rates between
//! two readings of the probes' typed totals, the phase, BGP sessions up, and the in-pod
//! localhost quantiles. A bounded ring, and a bounded set of series per point (drop
//! reasons and pods beyond [`MAX_KEYS`] are folded into `other`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;

use crate::judgement::signals::{Totals, quantile};

/// Points kept: half an hour at the default 5 s.
pub const CAPACITY: usize = 360;
/// Series per map (drop reasons, pods) per point; the rest share `other`.
pub const MAX_KEYS: usize = 16;

/// Flannel's and Calico's VXLAN ports: the two series of the VXLAN chart.
const VXLAN_PORTS: [u16; 2] = [8472, 4789];

/// One sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Point {
    /// Unix seconds.
    pub t: f64,
    pub phase: Option<&'static str>,
    /// Packets per second, both directions, by UDP port.
    pub vxlan: BTreeMap<u16, f64>,
    /// Packets per second the pods sent, by CNI family of their veth (`veth`, `cali`).
    pub pods: BTreeMap<&'static str, f64>,
    pub bgp_sessions_up: usize,
    /// Drops per second, by reason.
    pub drops: BTreeMap<String, f64>,
    /// Seconds, by pod, over the interval.
    pub localhost_p50: BTreeMap<String, f64>,
    pub localhost_p99: BTreeMap<String, f64>,
}

impl Point {
    /// The point between two readings of the totals `seconds` apart.
    #[must_use]
    pub fn between(before: &Totals, now: &Totals, seconds: f64, t: f64, phase: Option<&'static str>) -> Self {
        let rate = |after: f64, earlier: f64| (after - earlier).max(0.0) / seconds.max(f64::MIN_POSITIVE);
        let mut vxlan: BTreeMap<u16, f64> = VXLAN_PORTS.iter().map(|port| (*port, 0.0)).collect();
        for (flow, count) in &now.vxlan {
            let earlier = before.vxlan.get(flow).copied().unwrap_or(0.0);
            *vxlan.entry(flow.port).or_default() += rate(*count, earlier);
        }
        let mut pods: BTreeMap<&'static str, f64> = [("veth", 0.0), ("cali", 0.0)].into();
        for (device, count) in &now.interface_packets_received {
            let Some(family) = ["veth", "cali"].into_iter().find(|prefix| device.starts_with(prefix)) else {
                continue;
            };
            let earlier = before.interface_packets_received.get(device).copied().unwrap_or(0.0);
            *pods.entry(family).or_default() += rate(*count, earlier);
        }
        let drops = bounded(
            now.drops.iter().map(|(reason, count)| {
                (reason.clone(), rate(*count, before.drops.get(reason).copied().unwrap_or(0.0)))
            }),
            |a, b| a + b,
        );
        let (mut localhost_p50, mut localhost_p99) = (Vec::new(), Vec::new());
        for (pod, buckets) in &now.localhost_response_by_pod {
            let earlier = before.localhost_response_by_pod.get(pod).map_or(&[][..], Vec::as_slice);
            if let Some(p50) = quantile(0.5, earlier, buckets) {
                localhost_p50.push((pod.clone(), p50));
            }
            if let Some(p99) = quantile(0.99, earlier, buckets) {
                localhost_p99.push((pod.clone(), p99));
            }
        }
        Self {
            t,
            phase,
            vxlan,
            pods,
            bgp_sessions_up: now.bgp.values().filter(|session| session.up).count(),
            drops,
            // The slowest pod is what the folded series shows.
            localhost_p50: bounded(localhost_p50, f64::max),
            localhost_p99: bounded(localhost_p99, f64::max),
        }
    }
}

/// At most [`MAX_KEYS`] entries: the largest values keep their own, the rest are folded
/// into `other` with `fold`.
fn bounded(
    entries: impl IntoIterator<Item = (String, f64)>,
    fold: fn(f64, f64) -> f64,
) -> BTreeMap<String, f64> {
    let mut entries: Vec<(String, f64)> = entries.into_iter().collect();
    entries.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = BTreeMap::new();
    for (index, (key, value)) in entries.into_iter().enumerate() {
        let key = if index < MAX_KEYS - 1 { key } else { "other".to_owned() };
        kept.entry(key).and_modify(|v: &mut f64| *v = fold(*v, value)).or_insert(value);
    }
    kept
}

/// The ring of points, oldest first.
#[derive(Debug, Default)]
pub struct History {
    points: VecDeque<Point>,
    pub interval_seconds: f64,
}

impl History {
    #[must_use]
    pub fn new(interval_seconds: f64) -> Self {
        Self { points: VecDeque::with_capacity(CAPACITY), interval_seconds }
    }

    pub fn push(&mut self, point: Point) {
        if self.points.len() == CAPACITY {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }

    /// The series as the page reads them: one array per series, as long as `t`, `None`
    /// where a point has no value for it.
    #[must_use]
    pub fn series(&self) -> Series {
        let column =
            |value: &dyn Fn(&Point) -> Option<f64>| self.points.iter().map(value).collect::<Vec<_>>();
        let by_key = |keys: BTreeSet<String>, value: &dyn Fn(&Point, &str) -> Option<f64>| {
            keys.into_iter().map(|key| (key.clone(), column(&|p| value(p, &key)))).collect()
        };
        let keys =
            |of: &dyn Fn(&Point) -> Vec<String>| self.points.iter().flat_map(of).collect::<BTreeSet<_>>();
        Series {
            interval_seconds: self.interval_seconds,
            t: self.points.iter().map(|p| p.t).collect(),
            phase: self.points.iter().map(|p| p.phase).collect(),
            vxlan_packets_per_second: by_key(
                keys(&|p| p.vxlan.keys().map(ToString::to_string).collect()),
                &|p, key| key.parse().ok().and_then(|port: u16| p.vxlan.get(&port).copied()),
            ),
            pod_packets_per_second: by_key(
                keys(&|p| p.pods.keys().map(|k| (*k).to_owned()).collect()),
                &|p, key| p.pods.get(key).copied(),
            ),
            bgp_sessions_up: self.points.iter().map(|p| p.bgp_sessions_up).collect(),
            drops_per_second: by_key(keys(&|p| p.drops.keys().cloned().collect()), &|p, key| {
                p.drops.get(key).copied()
            }),
            localhost_p50_seconds: by_key(keys(&|p| p.localhost_p50.keys().cloned().collect()), &|p, key| {
                p.localhost_p50.get(key).copied()
            }),
            localhost_p99_seconds: by_key(keys(&|p| p.localhost_p99.keys().cloned().collect()), &|p, key| {
                p.localhost_p99.get(key).copied()
            }),
        }
    }
}

/// `/live.json`'s `history`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    pub interval_seconds: f64,
    pub t: Vec<f64>,
    pub phase: Vec<Option<&'static str>>,
    pub vxlan_packets_per_second: BTreeMap<String, Vec<Option<f64>>>,
    pub pod_packets_per_second: BTreeMap<String, Vec<Option<f64>>>,
    pub bgp_sessions_up: Vec<usize>,
    pub drops_per_second: BTreeMap<String, Vec<Option<f64>>>,
    pub localhost_p50_seconds: BTreeMap<String, Vec<Option<f64>>>,
    pub localhost_p99_seconds: BTreeMap<String, Vec<Option<f64>>>,
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "the values compared are exact in f64")]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::judgement::signals::{Session, VxlanFlow};

    fn flow(port: u16, egress: bool) -> VxlanFlow {
        VxlanFlow { peer: Ipv4Addr::new(192, 168, 10, 12), port, egress }
    }

    #[test]
    fn a_point_is_the_rates_between_two_readings() {
        let mut before = Totals::default();
        let mut now = Totals::default();
        before.vxlan = [(flow(8472, true), 100.0)].into();
        now.vxlan = [(flow(8472, true), 150.0), (flow(4789, true), 25.0), (flow(4789, false), 25.0)].into();
        now.interface_packets_received =
            [("veth1".to_owned(), 10.0), ("cali2".to_owned(), 30.0), ("eth0".to_owned(), 99.0)].into();
        now.drops = [("NETFILTER_DROP".to_owned(), 15.0)].into();
        now.bgp = [(Ipv4Addr::new(192, 168, 10, 12), Session { up: true, ..Session::default() })].into();
        // 3 answers within 5 ms, 1 more within 10 ms.
        now.localhost_response_by_pod =
            [("mlserver-0".to_owned(), vec![(0.005, 3.0), (0.01, 4.0), (f64::INFINITY, 4.0)])].into();
        let point = Point::between(&before, &now, 5.0, 1000.0, Some("mixed"));
        assert_eq!(point.vxlan, [(8472, 10.0), (4789, 10.0)].into());
        assert_eq!(point.pods, [("veth", 2.0), ("cali", 6.0)].into());
        assert_eq!(point.drops, [("NETFILTER_DROP".to_owned(), 3.0)].into());
        assert_eq!(point.bgp_sessions_up, 1);
        assert!((point.localhost_p99["mlserver-0"] - 0.0098).abs() < 1e-9, "{point:?}");
        assert!(point.localhost_p50["mlserver-0"] <= 0.005, "{point:?}");
    }

    #[test]
    fn the_ring_and_its_series_are_bounded() {
        let mut history = History::new(5.0);
        // More drop reasons than a chart shows, each 1 a second.
        let now = Totals {
            drops: (0..MAX_KEYS + 5).map(|r| (format!("R{r:02}"), 5.0)).collect(),
            ..Totals::default()
        };
        for i in 0..CAPACITY + 10 {
            history.push(Point::between(&Totals::default(), &now, 5.0, i as f64, None));
        }
        let series = history.series();
        assert_eq!(series.t.len(), CAPACITY);
        assert_eq!(series.t[0], 10.0, "the oldest went first");
        assert_eq!(series.drops_per_second.len(), MAX_KEYS);
        assert_eq!(series.drops_per_second["other"][0], Some(6.0), "6 reasons folded, summed");
        assert!(series.drops_per_second.values().all(|column| column.len() == CAPACITY));
    }
}
