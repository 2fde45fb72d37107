//! `payctl watch ORDER_ID [--after SEQ] [--until-terminal]` and `payctl watch --all [--after
//! GLOBAL_SEQ]`: live, one line per event. A dropped stream is resumed by the shared
//! [`payments_client::Follower`] (backoff, then a replay after the last position seen, so no
//! event is missed or shown twice). On Ctrl-C (or the end) the cursor is printed on stderr for
//! `--after`.

use std::pin::pin;

use serde_json::json;

use crate::{
    cli::WatchArgs,
    client::Conn,
    exit::{Exit, Failure},
    render::{self, table},
};

pub async fn run(conn: &Conn, args: &WatchArgs, as_json: bool) -> Result<Exit, Failure> {
    let (mut follower, resume) = match &args.order_id {
        Some(order_id) => (
            conn.watch()
                .follow_order(order_id, args.after, args.until_terminal),
            format!("payctl watch {order_id} --after"),
        ),
        None => (
            conn.watch().follow_events(args.after),
            "payctl watch --all --after".to_owned(),
        ),
    };
    // Open now so that a refusal (key, role, unknown order) ends the command at once.
    follower.open().await?;
    if !as_json {
        eprintln!(
            "following after {} (Ctrl-C stops and prints the cursor)",
            follower.cursor()
        );
    }
    let mut stop = pin!(stop_signal());
    let result = loop {
        tokio::select! {
            next = follower.next() => match next {
                Ok(Some(event)) => {
                    let printed = if as_json {
                        render::out_json(&render::json::event(&event))
                    } else {
                        render::out(&table::event(&event))
                    };
                    if let Err(failure) = printed {
                        break Err(failure);
                    }
                }
                Ok(None) => break Ok(Exit::Success),
                Err(status) => break Err(Failure::from(status)),
            },
            () = &mut stop => break Ok(Exit::Success),
        }
    };
    let cursor = follower.cursor();
    if as_json {
        eprintln!("{}", json!({ "cursor": cursor }));
    } else {
        eprintln!("cursor {cursor} (resume with: {resume} {cursor})");
    }
    result
}

/// Ctrl-C, or (on Unix) SIGTERM: how an operator or a supervisor stops a watch.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
