//! Integration tests of `delibera-near`, one binary.

mod cache;
mod contracts;
mod local_registry;
mod registrar;
mod rpc;
mod sender;
mod support;
mod transaction;
