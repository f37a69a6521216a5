#![doc = include_str!("../README.md")]

mod api_key;
mod claim;
mod error;
mod http;
mod registration;
mod rpc;
mod server;
mod store;
mod tools;

pub use api_key::ApiKey;
pub use claim::{ClaimPolicy, ClaimStatus, ClaimTicket, Claimed};
pub use error::{Error, Result};
pub use http::{AppState, DEFAULT_MAX_BYTES_PER_ORG, DEFAULT_MAX_KEYS_PER_ORG, Limits, app};
pub use registration::{DEFAULT_REGISTRATIONS_PER_MINUTE, RegistrationLimit, RegistrationScope};
pub use server::{BOOTSTRAP_ORG, Config, DATABASE_FILE, LocalEnsue, run};
pub use store::Store;

pub use axum;
pub use delibera_serve::Edges;
