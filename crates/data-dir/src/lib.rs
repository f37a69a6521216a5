#![cfg_attr(not(test), warn(unused_crate_dependencies))]
#![doc = include_str!("../README.md")]

mod error;
mod private;

pub use error::{Error, Result};
pub use private::{
    check_writable, create_private_file, prepare_sqlite_file, private_dir, tighten_file,
    with_suffix, write_private_file,
};
