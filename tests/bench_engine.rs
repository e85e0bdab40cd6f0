//! `tessera bench engine` end to end, small: every scenario runs through the real binary
//! and prints the JSON report whose field names are a stable interface. Every transfer
//! is counted once: a held transfer ends with its capture or release, which rides in the
//! worker's next call, so a follow-up lost or counted twice shows as `accepted` off
//! `transfers`.

use std::process::Command;

use serde_json::Value;

/// The fields the checks read, with the type each must have.
const STABLE_FIELDS: [&str; 8] = [
    "scenario",
    "transfers",
    "completed_per_second",
    "acknowledged_per_second",
    "commit_latency_ms_p50",
    "commit_latency_ms_p99",
    "fsyncs_per_second",
    "peak_rss_bytes",
];

/// Runs `tessera bench engine` with `args` on a fresh data directory (removed after); also
/// says whether the run created that directory.
fn run_engine(args: &[&str]) -> (std::process::Output, bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let output = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["bench", "engine"])
        .args(args)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("run tessera bench engine");
    (output, data.exists())
}

/// A small run's JSON report: 500 accounts, 4 batches in flight, and `extra` arguments.
fn report(scenario: &str, transfers: u64, batch_size: u64, extra: &[&str]) -> Value {
    let (transfers, batch_size) = (transfers.to_string(), batch_size.to_string());
    let mut args = vec!["--scenario", scenario, "--transfers", &transfers];
    args.extend(["--batch-size", &batch_size, "--accounts", "500"]);
    args.extend(["--in-flight", "4", "--json"]);
    args.extend(extra);
    let (output, _) = run_engine(&args);
    assert!(
        output.status.success(),
        "{scenario}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

#[test]
fn every_scenario_reports_each_transfer_once_under_the_stable_field_names() {
    for scenario in ["uniform", "hot-credit", "hot-debit", "holds"] {
        // 1,000 per batch over 4 workers: many calls each, so holds' follow-ups ride in
        // later calls and the last ones are sent on their own.
        let report = report(scenario, 12_345, 1_000, &[]);
        for field in STABLE_FIELDS {
            assert!(report.get(field).is_some(), "{scenario}: no field {field}");
        }
        assert_eq!(report["scenario"], scenario);
        assert_eq!(report["transfers"], 12_345);
        assert_eq!(report["accepted"], 12_345, "{scenario}: {report}");
        assert_eq!(report["rejected"], 0, "{scenario}: {report}");
        assert!(report["completed_per_second"].as_f64().unwrap() > 0.0);
        assert!(report["fsyncs_per_second"].as_f64().unwrap() > 0.0);
        assert!(report["peak_rss_bytes"].as_u64().unwrap() > 0);
        // The run's CPU is counted, by thread too (no thread spent more than the process,
        // give or take the kernel's rounding of each counter).
        let cpu = report["cpu_seconds"].as_f64().unwrap();
        assert!(cpu > 0.0, "{scenario}: {report}");
        let per_transfer = report["cpu_us_per_transfer"].as_f64().unwrap();
        assert!((per_transfer - cpu * 1e6 / 12_345.0).abs() < 1e-6 * per_transfer.max(1.0));
        let threads = report["cpu_seconds_by_thread"].as_object().unwrap();
        assert!(!threads.is_empty(), "{scenario}: {report}");
        for spent in threads.values() {
            assert!(
                spent.as_f64().unwrap() <= cpu + 0.05,
                "{scenario}: {report}"
            );
        }
        // Cores busy: the CPU over the span it was spent in, never more than the machine
        // has (give or take a clock tick of each counter).
        let cores = report["cpu_cores_busy"].as_f64().unwrap();
        let completed = report["completed_seconds"].as_f64().unwrap();
        assert!((cores - cpu / completed).abs() < 1e-9 * cores.max(1.0));
        let machine = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(
            cores > 0.0 && cores <= machine + 0.02 / completed,
            "{scenario}: {report}"
        );
        // Linux says what the hypervisor stole: a share of all the time there was.
        let steal = report["host_steal_percent"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&steal), "{scenario}: {report}");
    }
}

#[test]
fn holds_with_batches_of_one_command_still_end_every_transfer() {
    // A call whose one command is a follow-up leaves no room for a new transfer: the
    // worker must send it alone and go on.
    let report = report("holds", 300, 1, &[]);
    assert_eq!(report["accepted"], 300, "{report}");
    assert_eq!(report["rejected"], 0, "{report}");
}

#[test]
fn a_paced_run_sends_on_schedule_and_reports_its_offered_rate() {
    let report = report("holds", 10_000, 500, &["--rate", "20000"]);
    assert_eq!(report["offered_per_second"], 20_000, "{report}");
    assert_eq!(report["accepted"], 10_000, "{report}");
    assert!(report["late_batches"].as_u64().is_some(), "{report}");
    // The last batch's slot is transfer 9,500's: 0.475 s after the start. A run that
    // ignored the schedule would finish 10,000 transfers far sooner on any machine.
    let seconds = report["acknowledged_seconds"].as_f64().unwrap();
    assert!(seconds >= 0.475, "sent ahead of its schedule: {report}");
}

#[test]
fn a_closed_loop_run_reports_no_offered_rate_and_a_zero_rate_is_refused() {
    let report = report("uniform", 1_000, 100, &[]);
    assert!(report["offered_per_second"].is_null(), "{report}");
    assert_eq!(report["late_batches"], 0, "{report}");
    let (output, created) = run_engine(&["--rate", "0"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--rate must be between 1"), "{stderr}");
    assert!(!created, "a refused run creates no store");
}

#[test]
fn repeated_runs_report_medians_and_each_run_in_its_own_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let output = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "bench",
            "engine",
            "--scenario",
            "holds",
            "--transfers",
            "3000",
        ])
        .args([
            "--accounts",
            "200",
            "--batch-size",
            "500",
            "--in-flight",
            "2",
        ])
        .args(["--runs", "3", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run tessera bench engine --runs 3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(summary["runs"], 3, "{summary}");
    let runs = summary["per_run"].as_array().expect("per_run");
    assert_eq!(runs.len(), 3, "{summary}");
    for run in runs {
        // Each run is whole: a run that shared a store with another would find its
        // transfer ids taken.
        assert_eq!(run["accepted"], 3_000, "{run}");
        assert_eq!(run["rejected"], 0, "{run}");
    }
    for field in STABLE_FIELDS {
        assert!(!summary[field].is_null(), "{field} missing: {summary}");
    }
    for field in [
        "completed_per_second",
        "commit_latency_ms_p99",
        "peak_rss_bytes",
    ] {
        let mut figures: Vec<f64> = runs.iter().map(|r| r[field].as_f64().unwrap()).collect();
        figures.sort_by(f64::total_cmp);
        assert_eq!(
            summary[field].as_f64(),
            Some(figures[1]),
            "{field}: {summary}"
        );
    }
    for run in 1..=3 {
        assert!(
            data.join(format!("run-{run}")).is_dir(),
            "run-{run}'s store"
        );
    }
    let (output, created) = run_engine(&["--runs", "2"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--runs must be odd"), "{stderr}");
    assert!(!created, "a refused run creates no store");
}
