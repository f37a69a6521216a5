#![doc = include_str!("../README.md")]

mod capability;
mod car;
mod cid;
mod delegation;
mod delegator;
mod error;
mod principal;
mod value;
mod verify;

pub use capability::{Capability, validate_ability};
pub use car::{Block, Car};
pub use cid::{CAR, Cid, DAG_CBOR, IDENTITY, SHA2_256};
pub use delegation::{Delegation, DelegationBuilder, UCAN_VERSION};
pub use delegator::{
    Clock, ConfiguredDelegator, Delegator, FixedClock, LOCAL_SPACE_DID_FILE, LOCAL_SPACE_KEY_FILE,
    LocalSpaceDelegator, SPACE_ACCESS_ABILITIES, SPACE_ACCESS_LIFETIME_SECS, SpaceDelegation,
    SystemClock,
};
pub use error::{Error, Result};
pub use principal::Principal;
pub use value::Value;
