//! `HEALTH_LISTEN`: an extra plain-text port serving only `grpc.health.v1`, with the main port's
//! health state. Kubernetes' gRPC probes cannot present a client certificate, so while the main
//! port requires mTLS they ask here. Nothing else is served on it: no RPC, no reflection, so
//! plain text exposes only SERVING / NOT_SERVING.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::server::{HealthReporter, HealthService};

/// Serves health on `listener` until `stop`, then stops like the main port (open calls are
/// answered, health watches were ended by the shutdown). The shutdown turns health NOT_SERVING
/// before `stop`, so that probes here see the drain as the main port's callers do.
pub async fn serve(listener: TcpListener, reporter: HealthReporter, stop: CancellationToken) {
    // Plainly (`addr=127.0.0.1:8081`): with HEALTH_LISTEN on port 0 this line says where.
    let addr = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    tracing::info!(%addr, "health port (grpc.health.v1 only, plain text) listening");
    let service = tonic_health::pb::health_server::HealthServer::new(
        HealthService::from_health_reporter(reporter),
    );
    let served = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.cancelled_owned(),
        )
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "the health port stopped with an error");
    }
}
