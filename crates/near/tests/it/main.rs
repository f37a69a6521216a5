//! Integration tests of `delibera-near`, one binary.

mod accounts;
mod cache;
mod contracts;
mod local_registry;
mod nep413;
mod registrar;
mod rpc;
mod sender;
mod support;
mod transaction;
