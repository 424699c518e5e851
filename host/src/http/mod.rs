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
        router = router
            .route(&config.metrics_path, get(metrics::metrics))
            .route(
                &format!("{}/plugins", config.metrics_path),
                get(metrics::plugins),
            );
    }
    router.with_state(app)
}
