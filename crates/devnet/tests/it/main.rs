//! Integration tests of `delibera-devnet`, one binary.

mod near;
mod support;
