//! Integration tests of `delibera-data-dir`.

mod modes;
