#![cfg_attr(not(test), warn(unused_crate_dependencies))]
#![doc = include_str!("../README.md")]

mod body;
mod connection;
mod cors;
mod edges;
mod error;
mod limiter;
mod rejection;
mod server;

pub use cors::{Cors, CorsFuture, CorsLayer, CorsPolicy};
pub use edges::{
    CONNECTIONS_WITHOUT_FD_LIMIT, Capacity, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_FD_RESERVE,
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_SHUTDOWN_GRACE, Edges,
    LONGEST_TIMEOUT,
};
pub use error::{Error, Result};
pub use limiter::{LIMIT_WINDOW, PerMinuteLimiter, client_ip};
pub use rejection::{Rejection, json_rejection};
pub use server::Server;
