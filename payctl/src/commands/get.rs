//! `payctl get ORDER_ID`: the order, every attempt, its errors, resolution and refunds.

use payments_proto::v1 as pb;

use crate::{
    client::Conn,
    exit::{Exit, Failure},
    render::{self, json, table},
};

pub async fn run(conn: &Conn, order_id: &str, as_json: bool) -> Result<Exit, Failure> {
    let order = get_order(conn, order_id).await?;
    print_order(&order, as_json)?;
    Ok(Exit::Success)
}

pub async fn get_order(conn: &Conn, order_id: &str) -> Result<pb::Order, tonic::Status> {
    let request = conn.request(pb::GetOrderRequest {
        order_id: order_id.to_owned(),
    });
    conn.unary(conn.client().get_order(request)).await
}

/// The order as a table, or as one JSON document.
pub fn print_order(order: &pb::Order, as_json: bool) -> Result<(), Failure> {
    if as_json {
        render::out_json(&json::order(order))
    } else {
        render::out(&table::order(order))
    }
}
