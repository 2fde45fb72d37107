//! `payctl reviews [--csv]`: every open manual review, following `next_page_token` to the
//! end; a table, every detail as CSV, or one JSON document.

use std::collections::HashSet;

use payments_proto::v1 as pb;
use serde_json::json;
use tonic::Status;

use crate::{
    cli::ReviewsArgs,
    client::Conn,
    exit::{Exit, Failure},
    render::{self, csv, table},
};

pub async fn run(conn: &Conn, args: &ReviewsArgs, as_json: bool) -> Result<Exit, Failure> {
    let items = list_all(conn, args.page_size).await?;
    if args.csv {
        csv::reviews(std::io::stdout().lock(), &items)?;
    } else if as_json {
        let items: Vec<_> = items.iter().map(render::json::review).collect();
        render::out_json(&json!({ "items": items }))?;
    } else {
        render::out(&table::reviews(&items))?;
    }
    Ok(Exit::Success)
}

async fn list_all(conn: &Conn, page_size: i32) -> Result<Vec<pb::ManualReviewItem>, Status> {
    let mut items = Vec::new();
    let mut page_token = String::new();
    let mut seen = HashSet::new();
    loop {
        let request = conn.request(pb::ListManualReviewsRequest {
            page_size,
            page_token: page_token.clone(),
        });
        let page = conn
            .unary(conn.client().list_manual_reviews(request))
            .await?;
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            return Ok(items);
        }
        // A server that hands out a token twice would loop forever: stop and say so.
        if !seen.insert(page.next_page_token.clone()) {
            return Err(Status::internal(
                "the coordinator repeated a page token; the list is incomplete",
            ));
        }
        page_token = page.next_page_token;
    }
}
