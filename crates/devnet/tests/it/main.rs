//! Integration tests of `delibera-devnet`, one binary.

mod phala;
