//! Integration tests of `protocol-api`, one binary.

mod bad_input;
mod binary;
#[allow(unreachable_pub)] // `pub` helpers, used by the sibling modules only.
mod common;
mod config;
mod env_contract;
mod flows;
mod local_mode;
mod openapi;
mod production;
