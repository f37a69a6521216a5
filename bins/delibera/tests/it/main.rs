//! Integration tests of the `delibera` CLI (package `delibera-cli`), one binary.

mod agent;
mod delegation;
mod devnet;
mod ensue;
mod ensue_serve;
mod key;
mod near;
mod phala;
mod provision;
mod support;
