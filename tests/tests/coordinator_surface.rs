//! The coordinator serves the `payments.v1` API, gRPC health and reflection on one port, over
//! real gRPC; health and reflection need no API key, the API does.

use integration_tests::coordinator::{ADMIN, OPERATOR, REVIEWER, SERVICE, TestEnv};
use payments_proto::v1::{self as pb, payment_coordinator_client::PaymentCoordinatorClient};
use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test]
async fn serves_api_health_and_reflection_on_one_port() {
    let env = TestEnv::new().await;
    let replica = env.replica("surface", &[]).await;
    // Health and reflection answer without an API key (probes and grpcurl).
    let channel = tonic::transport::Endpoint::from_shared(replica.url.clone())
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

    // The coordinator's own API requires a key.
    let status = PaymentCoordinatorClient::new(channel.clone())
        .get_payments_status(pb::GetPaymentsStatusRequest {})
        .await
        .expect_err("no key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = PaymentCoordinatorClient::new(channel)
        .get_caller(pb::GetCallerRequest {})
        .await
        .expect_err("no key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // GetCaller: every role may ask who its own key is.
    for (id, role) in [
        (OPERATOR, pb::CallerRole::Operator),
        (REVIEWER, pb::CallerRole::Reviewer),
        (SERVICE, pb::CallerRole::Service),
        (ADMIN, pb::CallerRole::Admin),
    ] {
        let caller = replica
            .client(id)
            .await
            .get_caller(pb::GetCallerRequest {})
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:?}"))
            .into_inner();
        assert_eq!((caller.id.as_str(), caller.role()), (id, role));
    }

    replica.stop().await;
    env.cleanup().await;
}
