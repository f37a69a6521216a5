//! Integration tests of `delibera-ensue-local`, one binary.

mod auth;
mod client;
mod common;
mod observability;
mod protocol;
mod storage;
