#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod error;
pub mod near;
pub mod phala;

pub use error::{Error, Result};
