//! tonic wiring only: the coordinator service, health and reflection on one port.

use std::net::SocketAddr;

use payments_proto::v1::{
    FILE_DESCRIPTOR_SET, payment_coordinator_server::PaymentCoordinatorServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{api::Coordinator, config::Settings};

/// A bound, not yet serving coordinator; tests build it on port 0.
pub struct Application {
    listener: TcpListener,
    replica: String,
}

impl Application {
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.coordinator_listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot listen on {}: {e}", settings.coordinator_listen)
            })?;
        Ok(Self {
            listener,
            replica: settings.replica(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight calls finish.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<PaymentCoordinatorServer<Coordinator>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;

        tracing::info!(addr = %self.listener.local_addr()?, replica = %self.replica, "coordinator listening");
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(PaymentCoordinatorServer::new(Coordinator))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(self.listener),
                shutdown.cancelled_owned(),
            )
            .await?;
        Ok(())
    }
}
