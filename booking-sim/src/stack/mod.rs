//! Throwaway services of a run's own, shared by `booking-sim chaos` and the integration tests:
//! a PostgreSQL cluster ([`pg`]), a Redis server ([`redis`]) and coordinator replicas as child
//! processes ([`coordinator`]). Each starts on a free port in a temporary directory and is
//! stopped (and its files removed) when dropped; none ever touches a server it did not start.
//! Child processes get a process group of their own, so a Ctrl-C at the terminal reaches only
//! the driver, which then stops them in order.

pub mod coordinator;
pub mod pg;
pub mod redis;

use std::net::TcpListener;

use anyhow::Context;

/// A port nothing listens on now (the OS picks it; another process could take it before use).
pub fn free_port() -> anyhow::Result<u16> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port();
    Ok(port)
}
