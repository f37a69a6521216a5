#![doc = include_str!("../README.md")]

mod api_key;
mod claim;
mod error;
mod http;
mod rpc;
mod server;
mod store;
mod tools;

pub use api_key::ApiKey;
pub use claim::{ClaimPolicy, ClaimStatus, ClaimTicket, Claimed};
pub use error::{Error, Result};
pub use http::{AppState, Limits, app};
pub use server::{BOOTSTRAP_ORG, Config, DATABASE_FILE, LocalEnsue, run};
pub use store::Store;

pub use axum;
pub use delibera_serve::Edges;
