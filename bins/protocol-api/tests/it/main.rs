//! Integration tests of `protocol-api`, one binary.

mod bad_input;
#[allow(unreachable_pub)] // `pub` helpers, used by the sibling modules only.
mod common;
mod edges;
mod env_contract;
mod flows;
mod local_mode;
mod openapi;
mod production;
