//! Integration tests of `delibera-storacha`, one binary.

mod delegator;
mod no_panic;
mod vectors;
mod verify;
