//! Integration tests of `delibera-devnet`, one binary.

mod devnet;
mod image;
mod near;
mod phala;
mod support;
