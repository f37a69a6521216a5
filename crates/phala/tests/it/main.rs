//! Integration tests of `delibera-phala`, one binary.

mod client;
mod compose;
mod deployer;
mod env;
