//! Owner-only directories and files. Data directories hold keys and records
//! in the clear or sealed with a key that sits beside them, so nobody but the
//! owner may read them: directories are 0700 and files 0600 on Unix, and an
//! existing looser mode is tightened (with a warning, since someone chose it).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The mode of a data directory: owner only.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
/// The mode of a data file: owner read and write only.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;
/// The sticky bit: set on shared directories such as `/tmp`.
#[cfg(unix)]
const STICKY: u32 = 0o1000;

/// The files SQLite keeps beside a database, which hold its pages too.
const SQLITE_COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// Creates `path` (and its missing parents) owner-only, or tightens an
/// existing directory that others may read. A shared directory (one with
/// the sticky bit, such as `/tmp`) is left as it is, with a warning: it is
/// not a data dir of its own.
pub fn private_dir(path: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder
        .create(path)
        .map_err(io_error("create the directory", path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(io_error("inspect", path))?
            .permissions()
            .mode();
        if mode & STICKY != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:04o}", mode & 0o7777),
                "a shared directory is used as a data dir; its permissions are left as they are");
            return Ok(());
        }
        tighten(path, DIR_MODE)?;
    }
    Ok(())
}

/// Tightens an existing file to owner-only; a missing file is left missing.
pub fn tighten_file(path: &Path) -> Result<()> {
    #[cfg(unix)]
    tighten(path, FILE_MODE)?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Removes every permission bit outside `mode`, logging what it changed.
/// A mode already within `mode` (even a tighter, read-only one) is kept.
#[cfg(unix)]
fn tighten(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_error("inspect", path)(error)),
    };
    let current = metadata.permissions().mode() & 0o777;
    if current & !mode == 0 {
        return Ok(());
    }
    let tightened = current & mode;
    fs::set_permissions(path, fs::Permissions::from_mode(tightened))
        .map_err(io_error("restrict the permissions of", path))?;
    tracing::warn!(
        path = %path.display(),
        from = format!("{current:04o}"),
        to = format!("{tightened:04o}"),
        "tightened the permissions of a data path to owner-only"
    );
    Ok(())
}

/// Creates a new file only its owner can read and write (0600 on Unix);
/// fails if it exists.
pub fn create_private_file(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options.open(path).map_err(io_error("create", path))
}

/// Writes `contents` to a new owner-only file and flushes it to disk; fails
/// if the file exists. The file appears whole or not at all: the contents
/// go to a temporary file beside it that is linked into place once synced,
/// so a crash mid-write never leaves a truncated key behind.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    let staging = with_suffix(path, &format!(".partial-{}", std::process::id()));
    // A leftover from a crashed write by a process with the same pid.
    let _ = fs::remove_file(&staging);
    let written = create_private_file(&staging).and_then(|mut file| {
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(io_error("write", &staging))
    });
    let placed = written.and_then(|()| place_new(&staging, path));
    let _ = fs::remove_file(&staging);
    placed?;
    sync_parent(path)
}

/// Gives `staging`'s contents the name `path` unless `path` exists: a hard
/// link refuses an existing name atomically; where links are unsupported,
/// a checked rename is the fallback.
fn place_new(staging: &Path, path: &Path) -> Result<()> {
    match fs::hard_link(staging, path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(io_error("create", path)(error))
        }
        Err(_) if !path.exists() => fs::rename(staging, path).map_err(io_error("create", path)),
        Err(error) => Err(io_error("create", path)(error)),
    }
}

/// Flushes the directory entry of a new file, so the name survives a crash.
fn sync_parent(path: &Path) -> Result<()> {
    #[cfg(unix)]
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error("flush the directory of", path))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Gets `path` ready for SQLite to open: a missing directory created
/// owner-only (an existing one is the caller's to judge, with
/// [`private_dir`]), the database and its companion files (`-wal`, `-shm`,
/// `-journal`) tightened, and a missing database created empty and
/// owner-only, because SQLite creates files with the process's default mode
/// and gives its companion files the database's mode.
pub fn prepare_sqlite_file(path: &Path) -> Result<()> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        && !parent.exists()
    {
        private_dir(parent)?;
    }
    tighten_file(path)?;
    for suffix in SQLITE_COMPANIONS {
        tighten_file(&with_suffix(path, suffix))?;
    }
    match create_private_file(path) {
        Ok(_) => Ok(()),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Fails, naming the directory and the reason, unless a file can be created
/// in `dir`: a read-only data dir is reported as such rather than as the
/// first write that trips over it.
pub fn check_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".write-check-{}", std::process::id()));
    let not_writable = |source| Error::NotWritable {
        path: dir.to_path_buf(),
        source,
    };
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(not_writable)?;
    fs::remove_file(&probe).map_err(not_writable)
}

/// `path` with `suffix` appended to its file name (`jobs.sqlite` → `jobs.sqlite-wal`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
