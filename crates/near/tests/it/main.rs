//! Integration tests of `delibera-near`, one binary.

mod contracts;
mod local_registry;
mod registrar;
mod rpc;
mod sender;
mod support;
mod transaction;
