//! The agent crate's integration tests: one binary.

mod dashboard;
mod runtime;
