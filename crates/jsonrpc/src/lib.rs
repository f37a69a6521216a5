#![cfg_attr(not(test), warn(unused_crate_dependencies))]
#![doc = include_str!("../README.md")]

mod error;
mod error_object;
mod id;
mod reader;
mod request;
mod response;
mod server;

pub use error::{BODY_EXCERPT_CHARS, Error, Result, excerpt};
pub use error_object::ErrorObject;
pub use id::Id;
pub use reader::read_response;
pub use request::{Notification, Request};
pub use response::{Response, ResponsePayload};
pub use server::{Incoming, Rejection, parse_request};

/// The protocol version every message carries in its `jsonrpc` member.
pub const VERSION: &str = "2.0";

// A dependency that appears in public signatures.
pub use serde_json;
