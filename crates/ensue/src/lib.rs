#![doc = include_str!("../README.md")]

mod client;
mod config;
mod crypto;
mod encrypted;
mod error;
mod in_memory;
pub mod keys;
mod memory;
mod register;

pub use client::{EnsueClient, MAX_BATCH, like_escape};
pub use config::{DEFAULT_BASE_URL, DEFAULT_RETRY, Dialect, EnsueConfig};
pub use crypto::{
    CacheKey, ENCRYPTED_PREFIX, IV_LENGTH, TAG_LENGTH, is_sealed, key_material, node_base64_decode,
    node_hex_decode,
};
pub use encrypted::EncryptedMemory;
pub use error::{Error, Result};
pub use in_memory::InMemory;
pub use memory::Memory;
pub use register::{ApiKey, MAX_ORG_NAME_LENGTH, OrgRegistration, register_org, validate_org_name};

// Dependencies that appear in public signatures.
pub use delibera_backoff;
pub use reqwest;
pub use url;
