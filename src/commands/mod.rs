//! One module per group of subcommands; each turns parsed arguments into library calls.

pub mod cluster;
pub mod engine;
pub mod local;
pub mod route;

/// Serves /metrics, /health and /ready of this process on `addr` (its own thread).
pub fn start_ops(
    addr: std::net::SocketAddr,
    ready: router::ops::ReadyCheck,
) -> anyhow::Result<std::net::SocketAddr> {
    use anyhow::Context as _;
    // Absent when --metrics-listen already installed an exporter (it serves the metrics).
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    router::ops::spawn(addr, metrics, ready)
        .with_context(|| format!("cannot serve the ops endpoints on {addr}"))
}

/// Refuses a benchmark data directory that holds anything: a benchmark needs a fresh store.
pub fn require_fresh_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!(
            "data dir {} is not empty; the benchmark needs a fresh store",
            dir.display()
        );
    }
    Ok(())
}

/// A fresh directory path under the system's temporary directory, named `name` and this
/// process's id (what an earlier process of the same id left there is removed).
pub fn fresh_temp_dir(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(dir)
}

/// Prints a benchmark report: one line of JSON with `--json`, indented JSON otherwise.
pub fn print_report(
    report: &impl serde::Serialize,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    Ok(std::process::ExitCode::SUCCESS)
}
