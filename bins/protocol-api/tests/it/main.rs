//! Integration tests of `protocol-api`, one binary.

mod bad_input;
mod binary;
#[allow(unreachable_pub)] // `pub` helpers, used by the sibling modules only.
mod common;
mod config;
mod display_names;
mod edges;
mod env_contract;
mod events;
mod flows;
mod frontend;
#[allow(unreachable_pub)] // `pub` for `benches/kill_loop.rs`, which shares it.
mod kill_loop;
mod local_mode;
mod local_restarts;
mod openapi;
mod policy;
#[allow(unreachable_pub)] // `pub` helpers, used by the sibling modules only.
mod process;
mod production;
mod replicas;
mod restarts;
mod storage;
#[allow(unreachable_pub)] // `pub` helpers, for the replica tests.
mod store;
mod wallet_auth;
