//! `payctl refund ORDER_ID [--amount A --currency CUR] --reason … [--idempotency-key K]`:
//! compensates a paid order through the gateway (without --amount: all not yet refunded).
//!
//! The default idempotency key is derived from what is asked, never random: an operator whose
//! call timed out runs the same command again, and the coordinator replays the first refund
//! instead of making a second one. A second identical refund needs an explicit new key.

use payments_proto::v1 as pb;
use sha2::{Digest, Sha256};

use super::get::print_order;
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
        None => {
            let key = default_key(&args.order_id, amount.as_ref(), &args.reason);
            eprintln!(
                "refund idempotency key: {key} (derived from the order, amount, currency and \
                 reason: running this same command again replays this refund, never refunds \
                 twice; for a second identical refund pass a new --idempotency-key)"
            );
            key
        }
    };
    Ok(pb::RefundPaymentRequest {
        order_id: args.order_id.clone(),
        amount,
        reason: args.reason.clone(),
        idempotency_key,
    })
}

/// `payctl-refund:{order}:{amount_minor|rest}:{currency}:{sha256(reason)[..16]}`: the same
/// request (amount compared in minor units, so `1.00` and `100` EUR agree) gives the same key.
pub fn default_key(order_id: &str, amount: Option<&pb::Money>, reason: &str) -> String {
    let (minor, currency) = amount.map_or_else(
        || ("rest".to_owned(), ""),
        |m| (m.amount_minor.to_string(), m.currency.as_str()),
    );
    let digest = hex::encode(Sha256::digest(reason.as_bytes()));
    format!(
        "payctl-refund:{order_id}:{minor}:{currency}:{}",
        &digest[..16]
    )
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
    // Only one refund of an order can be unsettled at a time, and a new one is refused while
    // another is: an unsettled refund in a successful answer is this one.
    let unsettled = order.refunds.iter().any(|r| {
        matches!(
            r.outcome(),
            pb::RefundOutcome::InFlight | pb::RefundOutcome::Unknown
        ) && r.resolution() == pb::Resolution::Unspecified
    });
    Ok(if unsettled {
        Exit::NotPaid
    } else {
        Exit::Success
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn prepared(args: &[&str]) -> pb::RefundPaymentRequest {
        let cli = Cli::try_parse_from(["payctl", "refund"].iter().chain(args)).unwrap();
        let crate::cli::Command::Refund(args) = cli.command else {
            unreachable!()
        };
        prepare(&args).unwrap()
    }

    #[test]
    fn the_default_key_is_derived_from_the_request() {
        let first = prepared(&[
            "o-1",
            "--amount",
            "100",
            "--currency",
            "eur",
            "--reason",
            "r",
        ]);
        let digest = hex::encode(Sha256::digest(b"r"));
        assert_eq!(
            first.idempotency_key,
            format!("payctl-refund:o-1:100:EUR:{}", &digest[..16])
        );
        // The same request, however the amount is written: the same key.
        let again = prepared(&[
            "o-1",
            "--amount",
            "1.00",
            "--currency",
            "EUR",
            "--reason",
            "r",
        ]);
        assert_eq!(again.idempotency_key, first.idempotency_key);
        // Anything else asked: another key.
        for other in [
            prepared(&[
                "o-2",
                "--amount",
                "100",
                "--currency",
                "EUR",
                "--reason",
                "r",
            ]),
            prepared(&[
                "o-1",
                "--amount",
                "101",
                "--currency",
                "EUR",
                "--reason",
                "r",
            ]),
            prepared(&[
                "o-1",
                "--amount",
                "100",
                "--currency",
                "USD",
                "--reason",
                "r",
            ]),
            prepared(&[
                "o-1",
                "--amount",
                "100",
                "--currency",
                "EUR",
                "--reason",
                "r2",
            ]),
            prepared(&["o-1", "--reason", "r"]),
        ] {
            assert_ne!(other.idempotency_key, first.idempotency_key);
        }
        let rest = prepared(&["o-1", "--reason", "r"]);
        assert_eq!(
            rest.idempotency_key,
            format!("payctl-refund:o-1:rest::{}", &digest[..16])
        );
        assert!(rest.amount.is_none());
    }

    #[test]
    fn an_explicit_key_wins() {
        let explicit = prepared(&["o-1", "--reason", "r", "--idempotency-key", "second"]);
        assert_eq!(explicit.idempotency_key, "second");
    }

    #[test]
    fn the_key_flag_is_gone() {
        assert!(
            Cli::try_parse_from(["payctl", "refund", "o-1", "--reason", "r", "--key", "k"])
                .is_err()
        );
    }
}
