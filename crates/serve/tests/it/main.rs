//! Integration tests of `delibera-serve`, one binary: real TCP clients
//! against a served router, with short edges configured per test.

mod capacity;
#[allow(unreachable_pub)] // `pub` helpers, used by the sibling modules only.
mod common;
mod early_413;
mod shutdown;
mod timeouts;
