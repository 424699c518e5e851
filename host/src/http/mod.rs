//! HTTP endpoints beside Socket.IO: health (`/health`, `/health/live`, `/health/ready`) and
//! metrics (the original's JSON shape, or Prometheus text when asked).

mod health;
mod metrics;
mod proc;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::app::App;

/// The HTTP routes, with their paths from the configuration.
pub fn router(app: Arc<App>) -> Router {
    let mut router = Router::new();
    let config = app.config.clone();
    if config.enable_health {
        let base = config.health_path.trim_end_matches('/').to_string();
        router = router
            .route(&base, get(health::health))
            .route(&format!("{base}/live"), get(health::live))
            .route(&format!("{base}/ready"), get(health::ready));
    }
    if config.enable_metrics {
        let metrics = Router::new()
            .route(&config.metrics_path, get(metrics::metrics))
            .route(
                &format!("{}/plugins", config.metrics_path),
                get(metrics::plugins),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                app.clone(),
                metrics_access,
            ));
        router = router.merge(metrics);
    }
    router.merge(crate::api::router(&app)).with_state(app)
}

/// With `REALTIME_METRICS_TOKEN` set, the metrics endpoints need `Authorization: Bearer
/// <token>` (compared in constant time); 401 without it.
async fn metrics_access(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(token) = &app.config.metrics_token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if crate::util::constant_time_eq(given.as_bytes(), token.as_bytes()) {
        next.run(req).await
    } else {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            "metrics need Authorization: Bearer <REALTIME_METRICS_TOKEN>\n",
        )
            .into_response()
    }
}
