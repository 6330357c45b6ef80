//! `osdeploy serve`: an archive repository over HTTP, as any static server would serve it, with
//! Range requests, conditional requests (Last-Modified / If-Modified-Since) and cache headers:
//! packs, delta packs and their indexes are immutable (named by their hash), everything else —
//! and any miss — must be revalidated.
//! Clients are bounded in time and number (see [`connections`]).

mod connections;

pub use connections::{ServeLimits, raise_open_files_limit};

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::extract::Request;
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::services::ServeDir;

use osdeploy_store::layout;

use crate::error::TransportError;
use crate::sign::{now, signed_until};

/// Marks what is named by its content (packs, their indexes, delta packs and indexes) immutable,
/// when it is found; everything else, a miss included, must be revalidated.
async fn cache_headers(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let content_named = [layout::PACKS, layout::DELTAS]
        .iter()
        .any(|dir| path.strip_prefix('/').and_then(|p| p.strip_prefix(dir)).is_some_and(|rest| rest.starts_with('/')));
    let mut response = next.run(request).await;
    let found = response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED;
    let value = if content_named && found { "public, max-age=31536000, immutable" } else { "no-cache" };
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static(value));
    response
}

/// Logs a warning, at start and every hour, while the served summary's signature expires within a
/// day or has expired (nodes refuse an expired summary: the publisher must sign again).
async fn warn_before_expiry(dir: PathBuf) {
    loop {
        let summary = std::fs::read(dir.join(layout::SUMMARY));
        let signatures = std::fs::read(dir.join(layout::SUMMARY_SIGNATURE));
        if let (Ok(summary), Ok(signatures)) = (summary, signatures) {
            let left = signed_until(&summary, &signatures).map(|until| until - now());
            match left {
                Some(left) if left < 0 => tracing::warn!(
                    "the summary's signature expired {} min ago: nodes refuse this repository; sign it again (`osdeploy sign`)",
                    -left / 60
                ),
                Some(left) if left < 86_400 => tracing::warn!(
                    "the summary's signature expires in {} min: sign it again (`osdeploy sign`) before nodes refuse it",
                    left / 60
                ),
                Some(_) => {}
                None => tracing::warn!("the summary's signature has no expiry or does not verify: sign it again"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

/// Serves `dir` on `addr` within `limits` until the process is stopped; `ready` receives the bound
/// address.
pub async fn serve(
    dir: PathBuf,
    addr: SocketAddr,
    limits: ServeLimits,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), TransportError> {
    if let Some(problem) = limits.problem() {
        return Err(TransportError::Serve { addr, reason: problem });
    }
    if !dir.join(layout::SUMMARY).exists() {
        return Err(TransportError::WrongRepository {
            path: dir,
            reason: "is not an archive repository (no summary file): only archive repositories are served".into(),
        });
    }
    let app = Router::new().fallback_service(ServeDir::new(dir.clone())).layer(middleware::from_fn(cache_headers));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| TransportError::Serve { addr, reason: format!("cannot listen: {e}") })?;
    ready(listener.local_addr().map_err(|e| TransportError::Serve { addr, reason: e.to_string() })?);
    tokio::spawn(warn_before_expiry(dir));
    connections::accept_loop(listener, app, limits).await;
    Ok(())
}
