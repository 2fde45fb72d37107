//! CONTRACT §2 pins the API's names: clients in other languages are generated from the proto, so
//! a renamed message, field, enum value or RPC breaks them. This test reads the descriptor set
//! compiled into `payments-proto` and checks every pinned name.

use payments_proto::v1::FILE_DESCRIPTOR_SET;
use prost::Message;
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    field_descriptor_proto::{Label, Type},
};

fn contract_file() -> FileDescriptorProto {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    set.file
        .into_iter()
        .find(|f| f.name() == "payments/v1/coordinator.proto")
        .expect("payments/v1/coordinator.proto is in the descriptor set")
}

fn message<'a>(file: &'a FileDescriptorProto, name: &str) -> &'a DescriptorProto {
    file.message_type
        .iter()
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("message {name} is missing"))
}

fn enumeration<'a>(file: &'a FileDescriptorProto, name: &str) -> &'a EnumDescriptorProto {
    file.enum_type
        .iter()
        .find(|e| e.name() == name)
        .unwrap_or_else(|| panic!("enum {name} is missing"))
}

/// `(field, type)` where type is a scalar keyword, a message/enum name, or `repeated X`.
fn assert_fields(file: &FileDescriptorProto, msg: &str, expected: &[(&str, &str)]) {
    let m = message(file, msg);
    for (field, ty) in expected {
        let f = m
            .field
            .iter()
            .find(|f| f.name() == *field)
            .unwrap_or_else(|| panic!("{msg}.{field} is missing"));
        let (repeated, base) = match ty.strip_prefix("repeated ") {
            Some(base) => (true, base),
            None => (false, *ty),
        };
        assert_eq!(
            f.label() == Label::Repeated,
            repeated,
            "{msg}.{field}: repeated-ness"
        );
        let actual = match f.r#type() {
            Type::String => "string".to_owned(),
            Type::Int64 => "int64".to_owned(),
            Type::Int32 => "int32".to_owned(),
            Type::Bool => "bool".to_owned(),
            Type::Message | Type::Enum => f
                .type_name()
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_owned(),
            other => format!("{other:?}"),
        };
        assert_eq!(actual, base, "{msg}.{field}: type");
    }
}

#[test]
fn package_and_service_are_as_pinned() {
    let file = contract_file();
    assert_eq!(file.package(), "payments.v1");
    let service = file
        .service
        .iter()
        .find(|s| s.name() == "PaymentCoordinator")
        .expect("service PaymentCoordinator");
    let rpcs = [
        (
            "ProcessPayment",
            "ProcessPaymentRequest",
            "ProcessPaymentResponse",
            false,
        ),
        ("GetOrder", "GetOrderRequest", "Order", false),
        ("WatchOrder", "WatchOrderRequest", "OrderEvent", true),
        ("WatchEvents", "WatchEventsRequest", "OrderEvent", true),
        ("RefundPayment", "RefundPaymentRequest", "Order", false),
        (
            "ListManualReviews",
            "ListManualReviewsRequest",
            "ListManualReviewsResponse",
            false,
        ),
        (
            "ResolveManualReview",
            "ResolveManualReviewRequest",
            "Order",
            false,
        ),
        (
            "PausePayments",
            "PausePaymentsRequest",
            "PaymentsStatus",
            false,
        ),
        (
            "ResumePayments",
            "ResumePaymentsRequest",
            "PaymentsStatus",
            false,
        ),
        (
            "GetPaymentsStatus",
            "GetPaymentsStatusRequest",
            "PaymentsStatus",
            false,
        ),
    ];
    for (name, input, output, server_streaming) in rpcs {
        let m = service
            .method
            .iter()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("rpc {name} is missing"));
        assert_eq!(
            m.input_type(),
            format!(".payments.v1.{input}"),
            "{name} request"
        );
        assert_eq!(
            m.output_type(),
            format!(".payments.v1.{output}"),
            "{name} response"
        );
        assert_eq!(m.server_streaming(), server_streaming, "{name} streaming");
        assert!(!m.client_streaming(), "{name} must not be client-streaming");
    }
}

#[test]
fn messages_carry_the_pinned_fields() {
    let file = contract_file();
    assert_fields(
        &file,
        "Money",
        &[("amount_minor", "int64"), ("currency", "string")],
    );
    assert_fields(
        &file,
        "LineItem",
        &[
            ("product_id", "string"),
            ("quantity", "int32"),
            ("unit_amount_minor", "int64"),
        ],
    );
    assert_fields(
        &file,
        "ProcessPaymentRequest",
        &[
            ("order_id", "string"),
            ("amount", "Money"),
            ("customer_id", "string"),
            ("payment_method", "string"),
            ("items", "repeated LineItem"),
            ("idempotency_key", "string"),
            ("wait_for_outcome", "bool"),
        ],
    );
    assert_fields(
        &file,
        "ProcessPaymentResponse",
        &[
            ("order", "Order"),
            ("attempt", "Attempt"),
            ("joined_existing", "bool"),
        ],
    );
    assert_fields(
        &file,
        "Order",
        &[
            ("order_id", "string"),
            ("amount", "Money"),
            ("customer_id", "string"),
            ("state", "OrderState"),
            ("attempts", "repeated Attempt"),
            ("last_sequence", "int64"),
            ("refunded", "Money"),
            ("items", "repeated LineItem"),
        ],
    );
    assert_fields(
        &file,
        "Attempt",
        &[
            ("number", "int32"),
            ("operator_id", "string"),
            ("outcome", "AttemptOutcome"),
            ("gateway_idempotency_key", "string"),
            ("gateway_payment_id", "string"),
            ("decline_code", "string"),
            ("failure_message", "string"),
            ("started_at", "Timestamp"),
            ("finished_at", "Timestamp"),
        ],
    );
    assert_fields(
        &file,
        "OrderEvent",
        &[
            ("global_sequence", "int64"),
            ("order_id", "string"),
            ("sequence", "int64"),
            ("kind", "EventKind"),
            ("state", "OrderState"),
            ("attempt_number", "int32"),
            ("actor", "string"),
            ("occurred_at", "Timestamp"),
            ("detail", "string"),
        ],
    );
    assert_fields(&file, "GetOrderRequest", &[("order_id", "string")]);
    assert_fields(
        &file,
        "WatchOrderRequest",
        &[
            ("order_id", "string"),
            ("after_sequence", "int64"),
            ("until_terminal", "bool"),
        ],
    );
    assert_fields(
        &file,
        "WatchEventsRequest",
        &[("after_global_sequence", "int64")],
    );
    assert_fields(
        &file,
        "RefundPaymentRequest",
        &[
            ("order_id", "string"),
            ("amount", "Money"),
            ("reason", "string"),
            ("idempotency_key", "string"),
        ],
    );
    assert_fields(
        &file,
        "ListManualReviewsRequest",
        &[("page_size", "int32"), ("page_token", "string")],
    );
    assert_fields(
        &file,
        "ListManualReviewsResponse",
        &[
            ("items", "repeated ManualReviewItem"),
            ("next_page_token", "string"),
        ],
    );
    assert_fields(
        &file,
        "ResolveManualReviewRequest",
        &[
            ("order_id", "string"),
            ("resolution", "Resolution"),
            ("gateway_payment_id", "string"),
            ("note", "string"),
        ],
    );
    assert_fields(&file, "PausePaymentsRequest", &[("reason", "string")]);
    message(&file, "ResumePaymentsRequest");
    message(&file, "GetPaymentsStatusRequest");
    assert_fields(
        &file,
        "PaymentsStatus",
        &[
            ("paused", "bool"),
            ("reason", "string"),
            ("since", "Timestamp"),
            ("by", "string"),
        ],
    );
}

#[test]
fn enums_carry_the_pinned_values() {
    let file = contract_file();
    let expected: &[(&str, &[&str])] = &[
        (
            "OrderState",
            &[
                "ORDER_STATE_UNSPECIFIED",
                "ORDER_STATE_PENDING",
                "ORDER_STATE_AWAITING_CONFIRMATION",
                "ORDER_STATE_PAID",
                "ORDER_STATE_MANUAL_REVIEW",
                "ORDER_STATE_REFUNDED",
            ],
        ),
        (
            "AttemptOutcome",
            &[
                "ATTEMPT_OUTCOME_UNSPECIFIED",
                "ATTEMPT_OUTCOME_IN_FLIGHT",
                "ATTEMPT_OUTCOME_SUCCEEDED",
                "ATTEMPT_OUTCOME_DECLINED",
                "ATTEMPT_OUTCOME_CANCELLED",
                "ATTEMPT_OUTCOME_UNKNOWN",
            ],
        ),
        (
            "EventKind",
            &[
                "EVENT_KIND_UNSPECIFIED",
                "EVENT_KIND_ORDER_CREATED",
                "EVENT_KIND_ATTEMPT_STARTED",
                "EVENT_KIND_ATTEMPT_SUCCEEDED",
                "EVENT_KIND_ATTEMPT_DECLINED",
                "EVENT_KIND_ATTEMPT_CANCELLED",
                "EVENT_KIND_MANUAL_REVIEW_OPENED",
                "EVENT_KIND_MANUAL_REVIEW_RESOLVED",
                "EVENT_KIND_REFUNDED",
            ],
        ),
        (
            "Resolution",
            &[
                "RESOLUTION_UNSPECIFIED",
                "RESOLUTION_CHARGED",
                "RESOLUTION_NOT_CHARGED",
            ],
        ),
    ];
    for (name, values) in expected {
        let e = enumeration(&file, name);
        let actual: Vec<&str> = e.value.iter().map(|v| v.name()).collect();
        for v in *values {
            assert!(actual.contains(v), "{name} lacks {v}: {actual:?}");
        }
        assert_eq!(e.value[0].number(), 0, "{name}: the zero value comes first");
        assert!(
            e.value[0].name().ends_with("_UNSPECIFIED"),
            "{name}: zero value is *_UNSPECIFIED"
        );
    }
}
