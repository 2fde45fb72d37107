//! The coordinator serves the whole `payments.v1` API surface, gRPC health and reflection on one
//! port, over real gRPC. (The RPCs' behaviour arrives with the coordinator issue; until then each
//! answers UNIMPLEMENTED, and this test pins that the server, health and reflection are wired.)

use clap::Parser;
use coordinator::{config::Settings, server::Application};
use payments_proto::v1::{self as pb, payment_coordinator_client::PaymentCoordinatorClient};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn start() -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let settings = Settings::try_parse_from([
        "coordinator",
        "--coordinator-listen",
        "127.0.0.1:0",
        "--replica-id",
        "surface-test",
    ])
    .expect("settings");
    let app = Application::build(&settings).await.expect("bind");
    let url = format!("http://{}", app.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until(shutdown.clone()));
    (url, shutdown, task)
}

#[tokio::test]
async fn serves_api_health_and_reflection_on_one_port() {
    let (url, shutdown, task) = start().await;
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "payments.v1.PaymentCoordinator".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .next()
        .await
        .expect("one answer")
        .expect("ok answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"payments.v1.PaymentCoordinator".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    let status = PaymentCoordinatorClient::new(channel)
        .get_payments_status(pb::GetPaymentsStatusRequest {})
        .await
        .expect_err("not implemented yet");
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    shutdown.cancel();
    task.await
        .expect("server task")
        .expect("server ran cleanly");
}
