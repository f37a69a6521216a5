#![cfg_attr(not(test), warn(unused_crate_dependencies))]
#![doc = include_str!("../README.md")]

mod backoff;
mod retry_after;

pub use backoff::{Backoff, Jitter, random_up_to};
pub use retry_after::parse_retry_after;
