//! Integration tests of `delibera-deploy`, one binary.

mod env;
mod env_var;
mod health;
mod spec;
