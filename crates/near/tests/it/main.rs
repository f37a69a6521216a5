//! Integration tests of `delibera-near`, one binary.

mod account_id;
mod contracts;
mod local_registry;
mod rpc;
mod sender;
mod support;
mod transaction;
