//! Integration tests of `delibera-ensue`, one binary.

mod client;
mod crypto;
mod in_memory;
mod paging_and_quotas;
mod register;
