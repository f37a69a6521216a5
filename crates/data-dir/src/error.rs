//! The one error type of this crate.

use std::path::PathBuf;

/// Why a data directory or one of its files could not be prepared. Every
/// message names the path and the operating system's reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be created, inspected or changed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`create the directory`, `read`, …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The directory refuses new files (a read-only file system, or
    /// permissions the process lacks).
    #[error("{} is not writable: {source}", path.display())]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
