//! Owner-only creation, tightening of looser modes, and the writability check.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use delibera_data_dir::{
    Error, check_writable, prepare_sqlite_file, private_dir, tighten_file, write_private_file,
};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn new_directories_and_files_are_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let nested = tmp.path().join("a/b");
    private_dir(&nested).unwrap();
    assert_eq!(mode(&tmp.path().join("a")), 0o700);
    assert_eq!(mode(&nested), 0o700);

    write_private_file(&nested.join("key"), b"secret").unwrap();
    assert_eq!(mode(&nested.join("key")), 0o600);
    assert_eq!(std::fs::read(nested.join("key")).unwrap(), b"secret");
    let again = write_private_file(&nested.join("key"), b"other").unwrap_err();
    assert!(
        matches!(&again, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{again}"
    );

    let db = tmp.path().join("state/db.sqlite");
    prepare_sqlite_file(&db).unwrap();
    assert_eq!(mode(&tmp.path().join("state")), 0o700);
    assert_eq!(mode(&db), 0o600);
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
}

#[test]
fn a_private_file_appears_whole_and_leaves_nothing_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("space.key");
    // What a write interrupted by a crash of a process with this pid leaves.
    let leftover = tmp
        .path()
        .join(format!("space.key.partial-{}", std::process::id()));
    std::fs::write(&leftover, b"trunc").unwrap();

    write_private_file(&key, b"whole key").unwrap();
    assert_eq!(std::fs::read(&key).unwrap(), b"whole key");
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, ["space.key"], "no staging file is left");

    // An existing file is never replaced, and the refusal leaves no litter.
    write_private_file(&key, b"other key").unwrap_err();
    assert_eq!(std::fs::read(&key).unwrap(), b"whole key");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn looser_modes_are_tightened_and_tighter_ones_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o755);
    let db = dir.join("db.sqlite");
    for file in ["db.sqlite", "db.sqlite-wal", "db.sqlite-shm", "loose.key"] {
        std::fs::write(dir.join(file), b"x").unwrap();
        set_mode(&dir.join(file), 0o644);
    }
    std::fs::write(dir.join("read-only.key"), b"x").unwrap();
    set_mode(&dir.join("read-only.key"), 0o400);

    private_dir(&dir).unwrap();
    prepare_sqlite_file(&db).unwrap();
    tighten_file(&dir.join("loose.key")).unwrap();
    tighten_file(&dir.join("read-only.key")).unwrap();
    tighten_file(&dir.join("missing.key")).unwrap();

    assert_eq!(mode(&dir), 0o700);
    for file in ["db.sqlite", "db.sqlite-wal", "db.sqlite-shm", "loose.key"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&dir.join("read-only.key")), 0o400);
    assert!(!dir.join("missing.key").exists());
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"x",
        "an existing database is kept"
    );
}

#[test]
fn shared_directories_and_existing_parents_are_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    set_mode(&shared, 0o1777);
    private_dir(&shared).unwrap();
    assert_eq!(
        std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777,
        0o1777
    );

    let parent = tmp.path().join("parent");
    std::fs::create_dir(&parent).unwrap();
    set_mode(&parent, 0o755);
    prepare_sqlite_file(&parent.join("db.sqlite")).unwrap();
    assert_eq!(
        mode(&parent),
        0o755,
        "an existing directory is the caller's"
    );
    assert_eq!(mode(&parent.join("db.sqlite")), 0o600);
}

#[test]
fn an_unwritable_directory_is_named_with_its_cause() {
    let tmp = tempfile::tempdir().unwrap();
    check_writable(tmp.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the check leaves nothing behind"
    );

    let missing = tmp.path().join("gone");
    let error = check_writable(&missing).unwrap_err();
    assert!(matches!(error, Error::NotWritable { .. }));
    let message = error.to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("No such file or directory"), "{message}");

    // A file where a directory should be fails the same way, for any user.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let message = check_writable(&file).unwrap_err().to_string();
    assert!(message.contains("Not a directory"), "{message}");
}
