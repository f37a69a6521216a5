//! Integration tests of `delibera-ensue-local`, one binary.

mod auth;
mod claims;
mod client;
mod common;
mod edges;
mod observability;
mod policy;
mod protocol;
mod storage;
