//! Repeated benchmark runs summed up as medians (`tessera bench engine --runs N`).
//!
//! Owns how the reports of several runs become one: every top-level figure that is a
//! number in each run's report becomes the median of those numbers (each figure its own
//! median, so the p99 reported is the median p99, not the p99 of the fastest run); every
//! other field is taken from the run with the median `completed_per_second`; `per_run`
//! keeps each run's whole report, in the order they ran.
//!
//! Must never: run anything (the caller runs each benchmark in a fresh process, on a fresh
//! store), or summarize an even number of runs (a median must be a figure some run had).

use serde_json::Value;

/// Most runs one command makes.
pub const RUNS_MAX: usize = 9;

/// The figure the median run is chosen by.
const RANKED_BY: &str = "completed_per_second";

/// Why runs cannot be summed up.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RunsError {
    #[error("--runs must be odd and between 1 and {RUNS_MAX} (a median of runs), not {0}")]
    InvalidCount(usize),
    #[error("run {run} printed no JSON object with a numeric `{RANKED_BY}`")]
    NotAReport { run: usize },
}

/// Checks a number of runs: odd, 1 to [`RUNS_MAX`].
pub fn check_count(runs: usize) -> Result<(), RunsError> {
    if runs == 0 || runs > RUNS_MAX || runs.is_multiple_of(2) {
        return Err(RunsError::InvalidCount(runs));
    }
    Ok(())
}

/// One report of `reports` (each a run's JSON object), as described in the module docs.
pub fn median_report(reports: &[Value]) -> Result<Value, RunsError> {
    check_count(reports.len())?;
    let mut objects = Vec::with_capacity(reports.len());
    for (index, report) in reports.iter().enumerate() {
        match report.as_object() {
            Some(object) if object.get(RANKED_BY).is_some_and(Value::is_number) => {
                objects.push(object)
            }
            _ => return Err(RunsError::NotAReport { run: index + 1 }),
        }
    }
    let mut summary = median_by(objects.clone(), |object| number(&object[RANKED_BY])).clone();
    for (field, value) in summary.iter_mut() {
        let numbers: Option<Vec<&Value>> = objects
            .iter()
            .map(|object| object.get(field).filter(|v| v.is_number()))
            .collect();
        if let Some(numbers) = numbers {
            *value = median_by(numbers, |v| number(v)).clone();
        }
    }
    summary.insert("runs".into(), Value::from(reports.len()));
    summary.insert("per_run".into(), Value::Array(reports.to_vec()));
    Ok(Value::Object(summary))
}

/// The middle one of `items` (an odd, non-empty number of them) ordered by `key`.
fn median_by<T>(mut items: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = items.len() / 2;
    items.swap_remove(middle)
}

/// A JSON number as `f64` (checked to be a number by the caller).
fn number(value: &Value) -> f64 {
    value.as_f64().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn run(completed: f64, p99: f64, rss: u64, scenario: &str) -> Value {
        json!({
            "scenario": scenario,
            "completed_per_second": completed,
            "commit_latency_ms_p99": p99,
            "peak_rss_bytes": rss,
            "cpu_seconds_by_thread": { "store-commit": completed / 1000.0 },
        })
    }

    #[test]
    fn each_figure_is_its_own_median_and_the_rest_comes_from_the_median_run() {
        let reports = [
            run(250_000.0, 9.5, 400, "a"),
            run(150_000.0, 6.0, 500, "b"),
            run(200_000.0, 12.0, 300, "c"),
        ];
        let summary = median_report(&reports).expect("three reports");
        assert_eq!(summary["completed_per_second"], json!(200_000.0));
        // The median p99 (9.5) is the first run's, not the median run's (12.0).
        assert_eq!(summary["commit_latency_ms_p99"], json!(9.5));
        assert_eq!(summary["peak_rss_bytes"], json!(400));
        // Non-numeric fields, nested ones included, are the median run's.
        assert_eq!(summary["scenario"], json!("c"));
        assert_eq!(
            summary["cpu_seconds_by_thread"],
            json!({ "store-commit": 200.0 })
        );
        assert_eq!(summary["runs"], json!(3));
        assert_eq!(summary["per_run"], Value::Array(reports.to_vec()));
    }

    #[test]
    fn a_figure_missing_or_not_a_number_in_some_run_is_not_a_median() {
        let mut reports = [
            run(1.0, 1.0, 1, "a"),
            run(2.0, 2.0, 2, "b"),
            run(3.0, 3.0, 3, "c"),
        ];
        reports[0]["commit_latency_ms_p99"] = Value::Null;
        reports[2]
            .as_object_mut()
            .expect("object")
            .remove("peak_rss_bytes");
        let summary = median_report(&reports).expect("three reports");
        // Both are the median run's (the second), not a median of the other two.
        assert_eq!(summary["commit_latency_ms_p99"], json!(2.0));
        assert_eq!(summary["peak_rss_bytes"], json!(2));
        reports[1]["commit_latency_ms_p99"] = json!(30.0);
        let summary = median_report(&reports).expect("three reports");
        assert_eq!(summary["commit_latency_ms_p99"], json!(30.0));
    }

    #[test]
    fn an_even_count_none_or_too_many_runs_are_refused() {
        for count in [0, 2, 4, 10, 11] {
            assert_eq!(check_count(count), Err(RunsError::InvalidCount(count)));
        }
        for count in [1, 3, 5, 7, 9] {
            assert_eq!(check_count(count), Ok(()));
        }
        let two = [run(1.0, 1.0, 1, "a"), run(2.0, 2.0, 2, "b")];
        assert_eq!(median_report(&two), Err(RunsError::InvalidCount(2)));
    }

    #[test]
    fn a_run_without_a_report_is_named() {
        let reports = [run(1.0, 1.0, 1, "a"), json!("oops"), run(3.0, 3.0, 3, "c")];
        assert_eq!(
            median_report(&reports),
            Err(RunsError::NotAReport { run: 2 })
        );
    }

    proptest! {
        /// Every summed-up figure is one some run had, with as many runs at or below it as
        /// at or above it.
        #[test]
        fn every_figure_is_a_true_median(
            figures in prop::collection::vec((0u32..1_000_000, 0u32..100_000), 1..=4)
                .prop_map(|mut v| {
                    if v.len() % 2 == 0 {
                        v.pop();
                    }
                    v
                })
        ) {
            let reports: Vec<Value> = figures
                .iter()
                .map(|(completed, p99)| {
                    run(f64::from(*completed), f64::from(*p99) / 1000.0, 0, "x")
                })
                .collect();
            let summary = median_report(&reports).expect("odd count");
            for field in ["completed_per_second", "commit_latency_ms_p99"] {
                let median = summary[field].as_f64().expect("number");
                let all: Vec<f64> = reports
                    .iter()
                    .map(|r| r[field].as_f64().expect("number"))
                    .collect();
                prop_assert!(all.contains(&median));
                let below = all.iter().filter(|v| **v <= median).count();
                let above = all.iter().filter(|v| **v >= median).count();
                prop_assert!(below * 2 > all.len() && above * 2 > all.len());
            }
        }
    }
}
