//! `payctl pause`, `resume`, `status`: whether new payments are accepted (pausing and resuming
//! are admin-only; in-flight payments always finish).

use payments_proto::v1 as pb;

use crate::{
    client::Conn,
    exit::{Exit, Failure},
    render::{self, json, table},
};

pub async fn pause(conn: &Conn, reason: &str, as_json: bool) -> Result<Exit, Failure> {
    let request = conn.request(pb::PausePaymentsRequest {
        reason: reason.to_owned(),
    });
    let status = conn.unary(conn.client().pause_payments(request)).await?;
    print(&status, as_json)
}

pub async fn resume(conn: &Conn, reset_breaker: bool, as_json: bool) -> Result<Exit, Failure> {
    let request = conn.request(pb::ResumePaymentsRequest { reset_breaker });
    let status = conn.unary(conn.client().resume_payments(request)).await?;
    print(&status, as_json)
}

pub async fn status(conn: &Conn, as_json: bool) -> Result<Exit, Failure> {
    let request = conn.request(pb::GetPaymentsStatusRequest {});
    let status = conn
        .unary(conn.client().get_payments_status(request))
        .await?;
    print(&status, as_json)
}

fn print(status: &pb::PaymentsStatus, as_json: bool) -> Result<Exit, Failure> {
    if as_json {
        render::out_json(&json::payments_status(status))?;
    } else {
        render::out(&table::payments_status(status))?;
    }
    Ok(Exit::Success)
}
