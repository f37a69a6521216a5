#![doc = include_str!("../README.md")]

mod account_id;
mod did;
mod error;
mod keypair;
pub mod multicodec;
mod near;
mod public_key;

pub use account_id::{AccountId, AccountIdRule};
pub use did::Did;
pub use error::{Error, Result};
pub use keypair::{Keypair, SEED_LENGTH};
pub use public_key::{PUBLIC_KEY_LENGTH, PublicKey, SIGNATURE_LENGTH, Signature};
pub use zeroize::Zeroizing;
