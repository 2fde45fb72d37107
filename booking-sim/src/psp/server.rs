//! The accept loop. Our own (rather than `axum::serve`) so that a handler can close its
//! connection without answering: each connection gets a [`ConnHandle`] in its requests'
//! extensions, and its task races the connection against the handle. Dropping the connection
//! future closes the socket with no response, exactly what a gateway crash after charging
//! looks like to the client.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Lets a handler close the connection its request came on.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnHandle(Arc<Notify>);

impl ConnHandle {
    /// Closes the connection without answering. `notify_one` stores a permit, so this works
    /// even if the connection task is not waiting at this instant.
    pub(crate) fn close(&self) {
        self.0.notify_one();
    }

    async fn closed(&self) {
        self.0.notified().await;
    }
}

/// Accepts until `shutdown`; every connection task is tracked by `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                debug!(%peer, "connection accepted");
                tracker.spawn(serve_connection(stream, router.clone(), shutdown.clone()));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off a little rather than spin.
                warn!(%error, "accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, router: Router, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let handle = ConnHandle::default();
    let for_requests = handle.clone();
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(for_requests.clone());
            req
        })
        .service(router);
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    let mut connection = std::pin::pin!(connection);

    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(%error, "connection ended with an error");
            }
            return;
        }
        // Returning drops the connection: the socket closes with no response.
        () = handle.closed() => return,
        () = shutdown.cancelled() => {}
    }
    // Shutting down: finish the request in progress (handlers that would wait long close
    // their connection instead when they see the shutdown), then close.
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        _ = connection.as_mut() => {}
        () = handle.closed() => {}
    }
}
