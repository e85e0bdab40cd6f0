//! The operational endpoints every process serves on its own HTTP port: `/metrics`
//! (Prometheus), `/health` (the process is up) and `/ready` (it can do its job: for a DC
//! node, a lease and a loaded table; for the store server, it is serving).
//!
//! Runs on its own thread with its own actix system and one worker, so it answers even
//! when the process's main executor is saturated.
//!
//! Must never: take part in serving traffic; block the process that hosts it.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::Value;

/// Whether the process is ready, and what to say about it.
pub type ReadyCheck = Arc<dyn Fn() -> (bool, Value) + Send + Sync>;

struct OpsState {
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ready: ReadyCheck,
}

/// Binds `addr` and serves the endpoints on a thread of their own; returns the bound
/// address.
pub fn spawn(
    addr: SocketAddr,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ready: ReadyCheck,
) -> std::io::Result<SocketAddr> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ops-http".into())
        .spawn(move || {
            actix_rt::System::new().block_on(async move {
                let state = web::Data::new(OpsState { metrics, ready });
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(state.clone())
                        .route("/health", web::get().to(health))
                        .route("/ready", web::get().to(ready_handler))
                        .route("/metrics", web::get().to(metrics_handler))
                })
                .workers(1)
                .max_connections(256)
                .disable_signals()
                .bind(addr);
                match server {
                    Ok(server) => {
                        let bound = server.addrs().first().copied().unwrap_or(addr);
                        let _ = bound_tx.send(Ok(bound));
                        if let Err(error) = server.run().await {
                            tracing::warn!(%error, "ops endpoints stopped");
                        }
                    }
                    Err(error) => {
                        let _ = bound_tx.send(Err(error));
                    }
                }
            })
        })?;
    bound_rx
        .recv()
        .map_err(|_| std::io::Error::other("the ops endpoints thread died"))?
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn ready_handler(state: web::Data<OpsState>) -> HttpResponse {
    let (ready, detail) = (state.ready)();
    let body = serde_json::json!({"ready": ready, "detail": detail});
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    }
}

async fn metrics_handler(state: web::Data<OpsState>) -> HttpResponse {
    match &state.metrics {
        Some(handle) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(handle.render()),
        None => HttpResponse::NotFound().body("metrics are served by --metrics-listen"),
    }
}
