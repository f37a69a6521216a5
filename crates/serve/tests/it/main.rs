//! Integration tests of `delibera-serve`, one binary: real TCP clients
//! against a served router, with short edges configured per test.

#[allow(unreachable_pub)] // `pub` helpers, used by the sibling modules only.
mod common;
mod capacity;
mod early_413;
mod shutdown;
mod timeouts;
