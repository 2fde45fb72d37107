//! `payctl resolve ORDER_ID --charged --payment-id pi_… --note …` or `--not-charged --note …`:
//! a reviewer's decision on an order in manual review, recorded with their key id.

use payments_proto::v1 as pb;

use super::get::print_order;
use crate::{
    cli::ResolveArgs,
    client::Conn,
    exit::{Exit, Failure},
};

pub async fn run(conn: &Conn, args: &ResolveArgs, as_json: bool) -> Result<Exit, Failure> {
    // clap guarantees exactly one of --charged / --not-charged, and --payment-id with --charged.
    let resolution = if args.charged {
        pb::Resolution::Charged
    } else {
        pb::Resolution::NotCharged
    };
    let request = conn.request(pb::ResolveManualReviewRequest {
        order_id: args.order_id.clone(),
        resolution: resolution.into(),
        gateway_payment_id: args.payment_id.clone().unwrap_or_default(),
        note: args.note.clone(),
    });
    let order = conn
        .unary(conn.client().resolve_manual_review(request))
        .await?;
    print_order(&order, as_json)?;
    Ok(Exit::Success)
}
