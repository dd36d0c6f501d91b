//! `--find-max`: the highest rate a server holds, found by running the
//! scenario again at other rates.
//!
//! The search starts at `--rate`; while a run passes, the next rate is
//! `--find-max-factor` times the last (a run that fails first divides by
//! it instead); once there is a passing and a failing rate, it tries the
//! middle of the two until the failing one is within
//! `--find-max-precision` of the passing one, making at most
//! `--find-max-steps` runs. The ceiling is the highest rate whose run
//! passed its verdict ([`Report::failures`]: nothing lost, every send
//! acked, the rate held).
//!
//! The search itself ([`search`]) takes the run as a function, so it knows
//! nothing of how a run is made (the root's `find_max` gives it
//! [`crate::run`]) and is tested with a fake server. It uses [`report`]
//! only.
//!
//! [`report`]: crate::report

use crate::report::Report;
use serde::{Deserialize, Serialize};
use std::future::Future;

/// How the search moves (`--find-max-*`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Search {
    /// The first rate (`--rate`).
    pub start: f64,
    pub factor: f64,
    pub max_steps: usize,
    pub precision: f64,
}

impl Search {
    /// The rate to try after `done` steps with the highest passing and
    /// lowest failing rates so far; `None` when the search is over.
    pub fn next(&self, done: usize, pass: Option<f64>, fail: Option<f64>) -> Option<f64> {
        if done >= self.max_steps {
            return None;
        }
        match (pass, fail) {
            (None, None) => Some(self.start),
            (Some(p), None) => Some(p * self.factor),
            (None, Some(f)) => Some(f / self.factor),
            (Some(p), Some(f)) => (f - p > self.precision * p).then(|| (p + f) / 2.0),
        }
    }
}

/// One run of the search.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    /// 1, 2, …
    pub step: usize,
    pub rate: f64,
    pub passed: bool,
    /// The run's failures, or the error that stopped it.
    pub failures: Vec<String>,
    /// None when the run could not be made.
    pub report: Option<Report>,
}

impl Step {
    /// The line printed for the step.
    pub fn line(&self, max_steps: usize) -> String {
        let verdict = if self.passed {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", self.failures.join("; "))
        };
        match &self.report {
            Some(r) => format!(
                "step {}/{max_steps}  rate {:.0}/s  acks {:.0}/s on time ({:.0}/s overall)  ack p50 {:.1} ms  p99 {:.1} ms  lost {}  {verdict}",
                self.step,
                self.rate,
                r.on_time_acks_per_s,
                r.acks_per_s,
                r.ack_latency_ms.p50,
                r.ack_latency_ms.p99,
                r.lost,
            ),
            None => format!("step {}/{max_steps}  rate {:.0}/s  {verdict}", self.step, self.rate),
        }
    }
}

/// The highest passing rate and its run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ceiling {
    pub rate: f64,
    pub step: usize,
    pub report: Report,
}

/// What `--find-max` found; the JSON file is this, serialised.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FindMax {
    pub scenario: String,
    pub search: Search,
    pub steps: Vec<Step>,
    /// None when no step passed.
    pub ceiling: Option<Ceiling>,
    /// The lowest rate that failed; None when every step passed (the
    /// ceiling is then only a lower bound).
    pub lowest_failing_rate: Option<f64>,
}

impl FindMax {
    /// The closing line.
    pub fn summary(&self) -> String {
        match (&self.ceiling, self.lowest_failing_rate) {
            (Some(c), Some(f)) => format!(
                "ceiling {:.0} msg/s (step {}; {:.0} msg/s failed): held with nothing lost",
                c.rate, c.step, f
            ),
            (Some(c), None) => format!(
                "ceiling at least {:.0} msg/s (step {}): every step passed, raise --find-max-steps",
                c.rate, c.step
            ),
            (None, Some(f)) => {
                format!("no ceiling: every step failed, down to {f:.0} msg/s")
            }
            (None, None) => "no ceiling: no step ran".into(),
        }
    }
}

/// Runs `run(rate, step)` for each step of `search` and calls `on_step`
/// after each. An error in the first step is returned (the scenario
/// cannot run at all); a later one fails its step.
pub async fn search<F, Fut>(
    scenario: &str,
    search: Search,
    mut run: F,
    on_step: &mut dyn FnMut(&Step),
) -> anyhow::Result<FindMax>
where
    F: FnMut(f64, usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Report>>,
{
    let mut steps: Vec<Step> = Vec::new();
    let mut pass: Option<(f64, usize)> = None;
    let mut fail: Option<f64> = None;
    while let Some(rate) = search.next(steps.len(), pass.map(|p| p.0), fail) {
        let n = steps.len() + 1;
        let step = match run(rate, n).await {
            Ok(r) => Step {
                step: n,
                rate,
                passed: r.passed,
                failures: r.failures.clone(),
                report: Some(r),
            },
            Err(e) if n > 1 => Step {
                step: n,
                rate,
                passed: false,
                failures: vec![format!("the run failed: {e:#}")],
                report: None,
            },
            Err(e) => return Err(e),
        };
        if step.passed {
            pass = Some((rate, n));
        } else {
            fail = Some(fail.map_or(rate, |f| f.min(rate)));
        }
        on_step(&step);
        steps.push(step);
    }
    let ceiling = pass.and_then(|(rate, n)| {
        let report = steps.get(n - 1)?.report.clone()?;
        Some(Ceiling {
            rate,
            step: n,
            report,
        })
    });
    Ok(FindMax {
        scenario: scenario.into(),
        search,
        steps,
        ceiling,
        lowest_failing_rate: fail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search_from(start: f64) -> Search {
        Search {
            start,
            factor: 2.0,
            max_steps: 8,
            precision: 0.05,
        }
    }

    /// A server that holds `cap` messages/s: a faster run fails on acks.
    fn fake_run(cap: f64, rate: f64) -> anyhow::Result<Report> {
        let mut r = Report {
            scenario: "rooms".into(),
            rate,
            duration_s: 5.0,
            min_ack_ratio: 0.95,
            sent: (rate * 5.0) as u64,
            ..Report::default()
        };
        r.acked_on_time = (rate.min(cap) * 5.0) as u64;
        r.acked = r.sent;
        r.on_time_acks_per_s = rate.min(cap);
        r.check();
        Ok(r)
    }

    async fn find(cap: f64, s: Search) -> FindMax {
        let mut lines = Vec::new();
        let max = s.max_steps;
        let found = search(
            "rooms",
            s,
            |rate, _| async move { fake_run(cap, rate) },
            &mut |st| lines.push(st.line(max)),
        )
        .await
        .unwrap();
        assert_eq!(lines.len(), found.steps.len(), "a line per step");
        found
    }

    #[tokio::test]
    async fn rises_then_bisects_to_the_ceiling() {
        let f = find(1250.0, search_from(200.0)).await;
        let rates: Vec<f64> = f.steps.iter().map(|s| s.rate).collect();
        // 200, 400, 800 pass; 1600 fails; then halves the gap.
        assert_eq!(&rates[..4], &[200.0, 400.0, 800.0, 1600.0]);
        assert_eq!(rates[4], 1200.0);
        let c = f.ceiling.clone().expect("a ceiling");
        // 95% of what it asks must be held: passes up to 1250 / 0.95.
        assert!(c.rate <= 1250.0 / 0.95 && c.rate >= 1200.0, "{}", c.rate);
        assert!(f.steps.len() <= 8);
        assert!(c.report.passed);
        assert_eq!(c.report.rate, c.rate);
        let low = f.lowest_failing_rate.unwrap();
        assert!(low > c.rate);
        assert!(f.summary().starts_with("ceiling "), "{}", f.summary());
    }

    #[test]
    fn stops_within_the_precision() {
        let s = search_from(100.0);
        assert_eq!(s.next(3, Some(1000.0), Some(1040.0)), None);
        assert_eq!(s.next(3, Some(1000.0), Some(1100.0)), Some(1050.0));
        assert_eq!(s.next(8, Some(1000.0), Some(2000.0)), None, "step bound");
    }

    #[tokio::test]
    async fn a_first_failure_searches_downward() {
        let f = find(300.0, search_from(1000.0)).await;
        assert_eq!(f.steps[0].rate, 1000.0);
        assert_eq!(f.steps[1].rate, 500.0);
        assert_eq!(f.steps[2].rate, 250.0);
        assert!(f.steps[2].passed);
        let c = f.ceiling.expect("a ceiling");
        assert!((250.0..=300.0 / 0.95).contains(&c.rate), "{}", c.rate);
    }

    #[tokio::test]
    async fn every_step_passing_is_a_lower_bound() {
        let mut s = search_from(10.0);
        s.max_steps = 3;
        let f = find(1e9, s).await;
        assert_eq!(f.ceiling.as_ref().map(|c| c.rate), Some(40.0));
        assert_eq!(f.lowest_failing_rate, None);
        assert!(f.summary().contains("at least 40"), "{}", f.summary());
    }

    #[tokio::test]
    async fn a_later_run_that_cannot_be_made_fails_its_step() {
        let f = search(
            "rooms",
            search_from(100.0),
            |rate, n| async move {
                if n == 1 {
                    fake_run(1e9, rate)
                } else {
                    Err(anyhow::anyhow!("the server went away"))
                }
            },
            &mut |_| {},
        )
        .await
        .unwrap();
        assert_eq!(f.ceiling.map(|c| c.rate), Some(100.0));
        assert!(f.steps[1].failures[0].contains("the server went away"));
        let first = search(
            "rooms",
            search_from(100.0),
            |_, _| async { Err::<Report, _>(anyhow::anyhow!("no server")) },
            &mut |_| {},
        )
        .await;
        assert!(first.is_err());
    }
}
