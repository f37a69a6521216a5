//! Integration tests of `delibera-devnet`, one binary.

mod devnet;
mod near;
mod phala;
mod support;
