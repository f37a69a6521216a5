//! Integration tests of `delibera-coordination`, one binary.

mod batching;
#[allow(unreachable_pub)] // `pub` helpers, used by the sibling modules only.
mod common;
mod llm;
mod mixed;
mod round;
mod worker;
