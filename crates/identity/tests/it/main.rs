//! Integration tests of `delibera-identity`, one binary.

mod account_id;
mod identity;
