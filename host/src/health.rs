//! The operations endpoint (`--metrics ADDR`): `/metrics` in Prometheus
//! text, `/healthz` (200 while the supervisor loop is responsive) and
//! `/readyz` (200 while this participant holds a connected session and a
//! node in the election).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::election::{Election, ElectionState};
use crate::exposition::Format;
use crate::metrics::Metrics;

/// What the handlers read.
#[derive(Clone)]
struct Endpoint {
    metrics: Arc<Metrics>,
    election: Election,
}

/// Binds `addr` now, so a bad address or a port in use fails at start.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the endpoints on `listener` in the background.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>, election: Election) {
    let addr = listener.local_addr().ok();
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Endpoint { metrics, election });
    info!(
        event = "metrics_listening",
        addr = addr.map(|a| a.to_string()),
        "serving /metrics, /healthz and /readyz"
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(event = "metrics_failed", error = %e, "the metrics endpoint stopped");
        }
    });
}

async fn metrics_text(State(endpoint): State<Endpoint>, headers: HeaderMap) -> impl IntoResponse {
    // Prometheus text unless the scraper asks for OpenMetrics.
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let text = format.encode(&endpoint.metrics.render(&endpoint.election));
    ([(header::CONTENT_TYPE, format.content_type())], text)
}

async fn healthz(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    if endpoint.metrics.healthy() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the supervisor loop is not responding\n")
    }
}

async fn readyz(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let in_line = matches!(
        endpoint.election.state(),
        ElectionState::Follower { .. } | ElectionState::Leader { .. } | ElectionState::Suspended { .. }
    );
    match (in_line, endpoint.election.connected()) {
        (true, true) => (StatusCode::OK, "ready\n"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "no node in the election\n"),
        (true, false) => (StatusCode::SERVICE_UNAVAILABLE, "not connected to ZooKeeper\n"),
    }
}
