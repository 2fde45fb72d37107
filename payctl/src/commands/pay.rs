//! `payctl pay`: ProcessPayment. `--wait` shows the attempt's outcome (exit 5 when it did not
//! charge). A busy order (another caller's attempt in flight) is refused at once by the
//! coordinator: payctl shows who holds it and offers to follow that attempt to its outcome.

use std::io::IsTerminal;

use payments_proto::v1 as pb;
use serde_json::json;
use tonic::Status;
use tonic_types::StatusExt;

use super::{follow, get::print_order};
use crate::{
    cli::PayArgs,
    client::Conn,
    exit::{self, Exit, Failure},
    money,
    render::{self, outcome, state, table},
};

/// The request, checked locally (amount and item forms); a usage error exits before connecting.
pub fn prepare(args: &PayArgs) -> Result<pb::ProcessPaymentRequest, Failure> {
    let currency = args.currency.trim().to_ascii_uppercase();
    let amount_minor = money::parse_amount(&args.amount, &currency)
        .map_err(|e| Failure::Usage(format!("--amount: {e}")))?;
    let items = args
        .items
        .iter()
        .map(|item| parse_item(item).map_err(|e| Failure::Usage(format!("--item: {e}"))))
        .collect::<Result<_, _>>()?;
    let idempotency_key = match &args.idempotency_key {
        Some(key) => key.clone(),
        None => new_idempotency_key("payment"),
    };
    Ok(pb::ProcessPaymentRequest {
        order_id: args.order_id.clone(),
        amount: Some(pb::Money {
            amount_minor,
            currency,
        }),
        customer_id: args.customer_id.clone(),
        payment_method: args.payment_method.clone(),
        items,
        idempotency_key,
        wait_for_outcome: args.wait,
    })
}

/// A new random idempotency key, announced on stderr so that the operator can retry the very
/// same request with it (a retry with the same key joins the first, never charges twice).
/// Random is safe for a payment, unlike a refund (see `refund::default_key`): an order is paid
/// at most once, so a second run with another key is refused (ALREADY_PAID, or
/// PAYMENT_IN_PROGRESS while the first is in flight) and never reaches the gateway.
fn new_idempotency_key(what: &str) -> String {
    let key = uuid::Uuid::new_v4().to_string();
    eprintln!(
        "{what} idempotency key: {key} (to retry this exact request: --idempotency-key {key})"
    );
    key
}

/// `PRODUCT:QTY:UNIT_MINOR`; the product id may itself contain `:`.
fn parse_item(text: &str) -> Result<pb::LineItem, String> {
    let mut parts = text.rsplitn(3, ':');
    let (Some(unit), Some(quantity), Some(product_id)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("`{text}` is not PRODUCT:QTY:UNIT_MINOR"));
    };
    let quantity = quantity
        .parse()
        .map_err(|_| format!("`{quantity}` is not a quantity in `{text}`"))?;
    let unit_amount_minor = unit
        .parse()
        .map_err(|_| format!("`{unit}` is not an amount in minor units in `{text}`"))?;
    Ok(pb::LineItem {
        product_id: product_id.to_owned(),
        quantity,
        unit_amount_minor,
    })
}

pub async fn run(
    conn: &Conn,
    args: &PayArgs,
    request: pb::ProcessPaymentRequest,
    as_json: bool,
) -> Result<Exit, Failure> {
    let order_id = request.order_id.clone();
    let key = request.idempotency_key.clone();
    let mut client = conn.client();
    match conn
        .unary(client.process_payment(conn.request(request)))
        .await
    {
        Ok(response) => answered(conn, args, response, &key, as_json).await,
        Err(status) if exit::reason(&status).as_deref() == Some("PAYMENT_IN_PROGRESS") => {
            busy(conn, args, &order_id, status, as_json).await
        }
        Err(status) => Err(status.into()),
    }
}

async fn answered(
    conn: &Conn,
    args: &PayArgs,
    response: pb::ProcessPaymentResponse,
    key: &str,
    as_json: bool,
) -> Result<Exit, Failure> {
    let mut order = response.order.unwrap_or_default();
    let number = response.attempt.as_ref().map_or(0, |a| a.number);
    let in_flight = response.attempt.as_ref().is_none_or(|a| {
        matches!(
            a.outcome(),
            pb::AttemptOutcome::InFlight | pb::AttemptOutcome::Unspecified
        )
    });
    if args.wait && in_flight {
        // The server answers shortly before our deadline with the attempt still in flight if
        // it has no outcome yet: keep following it.
        order = follow::until_outcome(conn, &order.order_id, number, as_json).await?;
    }
    let attempt = order
        .attempts
        .iter()
        .find(|a| a.number == number)
        .cloned()
        .or(response.attempt)
        .unwrap_or_default();
    if as_json {
        render::out_json(&json!({
            "idempotency_key": key,
            "joined_existing": response.joined_existing,
            "attempt": render::json::attempt(&attempt),
            "order": render::json::order(&order),
        }))?;
    } else {
        let headline = if args.wait {
            format!(
                "attempt {} {}: order {} is {}",
                attempt.number,
                outcome(attempt.outcome()),
                order.order_id,
                state(order.state())
            )
        } else {
            format!(
                "attempt {} recorded ({}); follow it with: payctl watch {} --until-terminal",
                attempt.number,
                outcome(attempt.outcome()),
                order.order_id
            )
        };
        let joined = if response.joined_existing {
            " (joined your earlier request with the same idempotency key)"
        } else {
            ""
        };
        render::out(&format!("{headline}{joined}\n\n{}", table::order(&order)))?;
    }
    Ok(match (args.wait, attempt.outcome()) {
        (false, _) | (true, pb::AttemptOutcome::Succeeded) => Exit::Success,
        (true, _) => Exit::NotPaid,
    })
}

/// Refused because another caller's attempt holds the order: say who, and (if asked) follow
/// that attempt to its outcome. The exit stays "refused": this request charged nothing.
async fn busy(
    conn: &Conn,
    args: &PayArgs,
    order_id: &str,
    status: Status,
    as_json: bool,
) -> Result<Exit, Failure> {
    let holder = status.get_details_error_info().map(|i| i.metadata);
    let number = holder
        .as_ref()
        .and_then(|m| m.get("attempt"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let operator = holder
        .as_ref()
        .and_then(|m| m.get("operator_id").cloned())
        .unwrap_or_default();
    eprintln!(
        "{}",
        render::error::report(&Failure::Status(status), as_json)
    );
    if !(args.watch_if_busy || ask_to_watch(as_json).await) {
        if !as_json {
            eprintln!("follow it with: payctl watch {order_id} --until-terminal");
        }
        return Ok(Exit::Refused);
    }
    let order = follow::until_outcome(conn, order_id, number, as_json).await?;
    if !as_json {
        let ended = order
            .attempts
            .iter()
            .find(|a| a.number == number)
            .map_or("?", |a| outcome(a.outcome()));
        render::out(&format!(
            "attempt {number} by {operator} ended {ended}: order {order_id} is {}\n",
            state(order.state())
        ))?;
    }
    print_order(&order, as_json)?;
    Ok(Exit::Refused)
}

/// Asks on the terminal whether to follow the holder's attempt (never when not interactive).
async fn ask_to_watch(as_json: bool) -> bool {
    if as_json || !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return false;
    }
    eprint!("watch it until its outcome? [y/N] ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await;
    matches!(answer, Ok(Ok(line)) if matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_parse_from_the_right() {
        let item = parse_item("sku:9:2:625").unwrap();
        assert_eq!(item.product_id, "sku:9");
        assert_eq!(item.quantity, 2);
        assert_eq!(item.unit_amount_minor, 625);
        assert!(parse_item("sku-9:2").is_err());
        assert!(parse_item("sku-9:two:625").is_err());
        assert!(parse_item("sku-9:2:6.25").is_err());
    }
}
