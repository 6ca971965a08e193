//! The live page: `GET /` on the daemon's listen address, one self-contained page (its
//! HTML, CSS and JavaScript, and the uPlot charting library from the npm registry, all
//! embedded at build time) that reads `GET /live.json` every few seconds. The JSON is the
//! status (`/status`) and the last half hour of [`history`], sampled here from the
//! probes' typed totals. `GET /report-template.html` is the same page in one file, for
//! the lab's demo report (`cargo xtask lab demo` fills in its data).

pub mod history;
pub mod page;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use self::history::{History, Point, Series};
use crate::judgement::phase::{SharedPhase, unix_now};
use crate::judgement::signals::Signals;
use crate::judgement::status::Status;

/// How often a point is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

pub type SharedHistory = Arc<Mutex<History>>;

/// What `GET /live.json` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Live {
    pub status: Status,
    pub history: Series,
}

/// Samples the totals every [`SAMPLE_EVERY`] for as long as the daemon runs.
#[must_use]
pub fn start(signals: Signals, phase: SharedPhase) -> SharedHistory {
    let history: SharedHistory = Arc::new(Mutex::new(History::new(SAMPLE_EVERY.as_secs_f64())));
    let shared = history.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        let mut last: Option<(Instant, crate::judgement::signals::Totals)> = None;
        loop {
            tick.tick().await;
            // Gathering reads every probe's maps: off the async threads.
            let signals = signals.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || signals.totals()).await else { continue };
            let at = Instant::now();
            let phase = phase
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|(record, _)| record.phase.label());
            if let Some((then, before)) = &last {
                let point =
                    Point::between(before, &now, at.duration_since(*then).as_secs_f64(), unix_now(), phase);
                shared.lock().unwrap_or_else(PoisonError::into_inner).push(point);
            }
            last = Some((at, now));
        }
    });
    history
}

/// The live page's JSON now.
#[must_use]
pub fn snapshot(status: Status, history: &SharedHistory) -> Live {
    Live { status, history: history.lock().unwrap_or_else(PoisonError::into_inner).series() }
}
