//! The router process: the HTTP API on actix-web, and a follower that keeps the cached
//! ownership table and DC links current between requests (woken by a FoundationDB watch
//! on the table version where the store has watches, polled otherwise).
//!
//! Must never: run without a bound on workers, connections or bodies; keep serving after
//! the shutdown signal beyond actix's graceful timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};

use crate::auth::Auth;
use crate::http::{self, ApiState};
use crate::routing::Routing;

/// How often the follower refreshes the table when no request did.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);
/// Connections the HTTP server keeps at once (per worker).
pub const CONNECTIONS_MAX: usize = 4_096;

/// Settings of the router process.
pub struct RouterSettings {
    pub listen: SocketAddr,
    pub workers: usize,
    pub auth: Auth,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// Serves the API until SIGINT/SIGTERM; `on_bound` gets the bound address (for the
/// "serving on" line) before the first request.
pub async fn serve(
    routing: Arc<Routing>,
    settings: RouterSettings,
    on_bound: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let state = web::Data::new(ApiState::new(
        Arc::clone(&routing),
        settings.auth,
        settings.metrics,
    ));
    let follower = {
        let routing = Arc::clone(&routing);
        tokio::spawn(async move {
            // A watch on the table version (FoundationDB) wakes the follower at once; the
            // embedded and remote stores are polled.
            let version_key = cells::keys::table_version();
            let mut tick = tokio::time::interval(FOLLOW_INTERVAL);
            loop {
                match routing.store().watch(&version_key) {
                    Some(watch) => {
                        tokio::select! {
                            fired = watch => {
                                if let Err(error) = fired {
                                    tracing::warn!(%error, "table watch failed; polling");
                                    tick.tick().await;
                                }
                            }
                            _ = tick.tick() => {}
                        }
                    }
                    None => {
                        tick.tick().await;
                    }
                }
                if let Err(error) = routing.refresh().await {
                    tracing::warn!(%error, "router cannot follow the ownership table");
                }
            }
        })
    };
    let server = HttpServer::new(move || {
        // The factory runs on each worker thread: its calls to DC nodes (and their
        // answers) stay on it, without a hand-off to a client I/O thread and back.
        wire::local_io::local_io_here();
        App::new()
            .app_data(state.clone())
            .wrap_fn(|request, service| {
                // Time in the router per request (from routing to the response's head), by
                // route pattern, so an SRE can tell the router's share of a client's latency.
                let started = std::time::Instant::now();
                let route = request
                    .match_pattern()
                    .unwrap_or_else(|| "unmatched".to_string());
                let method = method_label(request.method());
                let response = actix_web::dev::Service::call(service, request);
                async move {
                    let response = response.await;
                    metrics::histogram!(
                        "tessera_router_request_seconds",
                        "method" => method,
                        "route" => route
                    )
                    .record(started.elapsed().as_secs_f64());
                    response
                }
            })
            .configure(http::configure)
    })
    .workers(settings.workers.max(1))
    .max_connections(CONNECTIONS_MAX)
    .client_request_timeout(Duration::from_secs(5))
    .shutdown_timeout(5)
    .bind(settings.listen)?;
    let bound = server.addrs().first().copied().unwrap_or(settings.listen);
    on_bound(bound);
    let result = server.run().await;
    follower.abort();
    result
}

/// The method as a static label (no allocation per request for the common ones).
fn method_label(method: &actix_web::http::Method) -> std::borrow::Cow<'static, str> {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"];
    match KNOWN.iter().find(|known| **known == method.as_str()) {
        Some(known) => std::borrow::Cow::Borrowed(known),
        None => std::borrow::Cow::Owned(method.as_str().to_string()),
    }
}
