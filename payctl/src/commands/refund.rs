//! `payctl refund ORDER_ID [--amount A --currency CUR] --reason … [--idempotency-key K]`:
//! compensates a paid order through the gateway (without --amount: all not yet refunded).

use payments_proto::v1 as pb;

use super::{get::print_order, new_idempotency_key};
use crate::{
    cli::RefundArgs,
    client::Conn,
    exit::{Exit, Failure},
    money,
};

/// The request, checked locally (the amount's form); a usage error exits before connecting.
pub fn prepare(args: &RefundArgs) -> Result<pb::RefundPaymentRequest, Failure> {
    let amount = match (&args.amount, &args.currency) {
        (Some(amount), Some(currency)) => Some(pb::Money {
            amount_minor: money::parse_amount(amount, currency)
                .map_err(|e| Failure::Usage(format!("--amount: {e}")))?,
            currency: currency.to_ascii_uppercase(),
        }),
        (None, None) => None,
        _ => {
            return Err(Failure::Usage(
                "--amount and --currency go together".to_owned(),
            ));
        }
    };
    let idempotency_key = match &args.idempotency_key {
        Some(key) => key.clone(),
        None => new_idempotency_key("refund"),
    };
    Ok(pb::RefundPaymentRequest {
        order_id: args.order_id.clone(),
        amount,
        reason: args.reason.clone(),
        idempotency_key,
    })
}

pub async fn run(
    conn: &Conn,
    request: pb::RefundPaymentRequest,
    as_json: bool,
) -> Result<Exit, Failure> {
    let order = conn
        .unary(conn.client().refund_payment(conn.request(request)))
        .await?;
    print_order(&order, as_json)?;
    Ok(Exit::Success)
}
