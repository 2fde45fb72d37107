//! `payctl resolve ORDER_ID`: a reviewer's decision on a manual review item, recorded with their
//! key id.
//!
//! - a payment in doubt: `--charged --payment-id pi_… --note …` or `--not-charged --note …`;
//! - refund N in doubt: `--refund N --refunded --refund-id re_… --note …` or
//!   `--refund N --not-refunded --note …`.

use payments_proto::v1 as pb;

use super::get::print_order;
use crate::{
    cli::ResolveArgs,
    client::Conn,
    exit::{Exit, Failure},
};

/// The request. clap guarantees exactly one decision, `--charged`/`--not-charged` only without
/// `--refund`, `--refunded`/`--not-refunded` only with it, and each id with its decision.
pub fn request(args: &ResolveArgs) -> pb::ResolveManualReviewRequest {
    let resolution = if args.charged {
        pb::Resolution::Charged
    } else if args.not_charged {
        pb::Resolution::NotCharged
    } else if args.refunded {
        pb::Resolution::Refunded
    } else {
        pb::Resolution::NotRefunded
    };
    pb::ResolveManualReviewRequest {
        order_id: args.order_id.clone(),
        resolution: resolution.into(),
        gateway_payment_id: args.payment_id.clone().unwrap_or_default(),
        note: args.note.clone(),
        refund_number: args.refund.unwrap_or(0),
        gateway_refund_id: args.refund_id.clone().unwrap_or_default(),
    }
}

pub async fn run(conn: &Conn, args: &ResolveArgs, as_json: bool) -> Result<Exit, Failure> {
    let request = conn.request(request(args));
    let order = conn
        .unary(conn.client().resolve_manual_review(request))
        .await?;
    print_order(&order, as_json)?;
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::{Parser, error::ErrorKind};

    fn parse(args: &[&str]) -> Result<ResolveArgs, clap::Error> {
        let cli = Cli::try_parse_from(["payctl", "resolve", "o-1"].iter().chain(args))?;
        let Command::Resolve(args) = cli.command else {
            unreachable!()
        };
        Ok(args)
    }

    #[test]
    fn each_decision_maps_to_its_request() {
        let charged =
            request(&parse(&["--charged", "--payment-id", "pi_1", "--note", "n"]).unwrap());
        assert_eq!(charged.resolution(), pb::Resolution::Charged);
        assert_eq!(charged.gateway_payment_id, "pi_1");
        assert_eq!(charged.refund_number, 0);

        let not_charged = request(&parse(&["--not-charged", "--note", "n"]).unwrap());
        assert_eq!(not_charged.resolution(), pb::Resolution::NotCharged);
        assert_eq!(not_charged.refund_number, 0);

        let refunded = request(
            &parse(&[
                "--refund",
                "2",
                "--refunded",
                "--refund-id",
                "re_9",
                "--note",
                "n",
            ])
            .unwrap(),
        );
        assert_eq!(refunded.resolution(), pb::Resolution::Refunded);
        assert_eq!(refunded.refund_number, 2);
        assert_eq!(refunded.gateway_refund_id, "re_9");
        assert_eq!(refunded.gateway_payment_id, "");

        let not_refunded =
            request(&parse(&["--refund", "1", "--not-refunded", "--note", "checked"]).unwrap());
        assert_eq!(not_refunded.resolution(), pb::Resolution::NotRefunded);
        assert_eq!(not_refunded.refund_number, 1);
        assert_eq!(not_refunded.note, "checked");
    }

    #[test]
    fn wrong_combinations_are_usage_errors() {
        for (args, why) in [
            (&["--note", "n"][..], "no decision"),
            (
                &["--charged", "--not-charged", "--note", "n"],
                "two decisions",
            ),
            (
                &[
                    "--refund",
                    "1",
                    "--refunded",
                    "--not-refunded",
                    "--refund-id",
                    "re_1",
                    "--note",
                    "n",
                ],
                "two refund decisions",
            ),
            (
                &[
                    "--charged",
                    "--payment-id",
                    "pi_1",
                    "--refunded",
                    "--refund",
                    "1",
                    "--refund-id",
                    "re_1",
                    "--note",
                    "n",
                ],
                "a payment and a refund decision",
            ),
            (
                &["--charged", "--note", "n"],
                "--charged without --payment-id",
            ),
            (
                &["--not-charged", "--payment-id", "pi_1", "--note", "n"],
                "--payment-id without --charged",
            ),
            (
                &[
                    "--refund",
                    "1",
                    "--charged",
                    "--payment-id",
                    "pi_1",
                    "--note",
                    "n",
                ],
                "--charged with --refund",
            ),
            (
                &["--refund", "1", "--not-charged", "--note", "n"],
                "--not-charged with --refund",
            ),
            (
                &["--refunded", "--refund-id", "re_1", "--note", "n"],
                "--refunded without --refund",
            ),
            (
                &["--not-refunded", "--note", "n"],
                "--not-refunded without --refund",
            ),
            (
                &["--refund", "1", "--refunded", "--note", "n"],
                "--refunded without --refund-id",
            ),
            (
                &[
                    "--refund",
                    "1",
                    "--not-refunded",
                    "--refund-id",
                    "re_1",
                    "--note",
                    "n",
                ],
                "--refund-id without --refunded",
            ),
            (
                &[
                    "--refund",
                    "1",
                    "--refunded",
                    "--refund-id",
                    "pi_1",
                    "--note",
                    "n",
                ],
                "a payment id as the refund id",
            ),
            (
                &["--refund", "0", "--not-refunded", "--note", "n"],
                "refund 0",
            ),
            (&["--not-charged"], "no note"),
        ] {
            let error = parse(args)
                .err()
                .unwrap_or_else(|| panic!("accepted: {why}"));
            assert_eq!(error.exit_code(), 2, "{why}: {error}");
            assert_ne!(error.kind(), ErrorKind::DisplayHelp, "{why}");
        }
    }
}
