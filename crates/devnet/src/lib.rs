#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod devnet;
mod error;
pub mod image;
pub mod near;
pub mod phala;

pub use devnet::{AGENT_IMAGE, Devnet, DevnetAccount, DevnetConfig, accounts};
pub use error::{Error, Result};
