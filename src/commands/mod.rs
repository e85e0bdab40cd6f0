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
