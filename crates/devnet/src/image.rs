//! Container images for devnet CVMs: an OCI archive (what
//! `scripts/build-image.sh` writes) unpacked into a root filesystem once its
//! blobs match their digests, and its entry point started as a child process
//! with a CVM's env, as a CVM's container runtime would start it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The repository name an image gets when its archive names none.
const DEFAULT_NAME: &str = "delibera-agent";

/// An image unpacked on this machine, known by its manifest's digest.
#[derive(Debug, Clone)]
pub struct AgentImage {
    digest: String,
    name: String,
    rootfs: PathBuf,
    config: RunConfig,
}

/// What an image's config says about running it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    user: Option<String>,
}

/// How a child process runs on an image's root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Confinement {
    /// Inside the root filesystem (`chroot`), as the image's user; needs root.
    Chroot,
    /// Through the image's own dynamic loader and libraries, with the host's
    /// `/` still visible: shows the image carries what its binary loads,
    /// without root.
    Loader,
}

impl Confinement {
    /// [`Confinement::Chroot`] for root, else [`Confinement::Loader`].
    pub fn for_this_process() -> Self {
        let root = std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0);
        if root { Self::Chroot } else { Self::Loader }
    }
}

/// What is kept beside an unpacked root filesystem.
#[derive(Serialize, Deserialize)]
struct Unpacked {
    digest: String,
    name: String,
    config: RunConfig,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: RunConfig,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::Image {
        reason: reason.into(),
    }
}

/// `sha256:<64 hex>` → the hex, refusing anything else (it becomes a path).
fn digest_hex(digest: &str) -> Result<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| invalid(format!("not a sha256 digest: {digest:?}")))
}

/// The digest an image reference pins (`name@sha256:…`), if any.
pub fn pinned_digest(reference: &str) -> Option<&str> {
    let (_, digest) = reference.rsplit_once('@')?;
    digest_hex(digest).ok().map(|_| digest)
}

impl AgentImage {
    /// Unpacks the OCI archive at `archive` under `store` (in
    /// `store/<digest hex>/`), checking every blob against its digest and
    /// every layer against the config's diff id; an image already there is
    /// opened, not unpacked again.
    pub fn unpack(archive: &Path, store: &Path) -> Result<Self> {
        let file = File::open(archive).map_err(|error| {
            invalid(format!(
                "cannot open the archive {}: {error}",
                archive.display()
            ))
        })?;
        let mut layout = Layout::read(file)?;
        let index: Index = layout.json("index.json")?;
        let [entry] = index.manifests.as_slice() else {
            return Err(invalid(format!(
                "the archive holds {} manifests; one image is expected",
                index.manifests.len()
            )));
        };
        if !entry.media_type.is_empty()
            && entry.media_type != "application/vnd.oci.image.manifest.v1+json"
        {
            return Err(invalid(format!(
                "the archive's entry is a {}, not an image manifest",
                entry.media_type
            )));
        }
        let name = entry
            .annotations
            .get("org.opencontainers.image.ref.name")
            .filter(|name| !name.is_empty() && !name.contains('@'))
            .cloned()
            .unwrap_or_else(|| DEFAULT_NAME.to_owned());
        let digest = entry.digest.clone();
        let hex = digest_hex(&digest)?.to_owned();
        if let Some(image) = Self::open(store, &digest)? {
            return Ok(image);
        }
        let manifest: Manifest = serde_json::from_slice(&layout.blob(entry)?)
            .map_err(|error| invalid(format!("the manifest is not JSON: {error}")))?;
        let config: ImageConfig = serde_json::from_slice(&layout.blob(&manifest.config)?)
            .map_err(|error| invalid(format!("the image config is not JSON: {error}")))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(invalid("the config's diff ids do not match the layers"));
        }

        std::fs::create_dir_all(store)?;
        let staging = tempfile::Builder::new()
            .prefix(".unpacking-")
            .tempdir_in(store)?;
        let rootfs = staging.path().join("rootfs");
        std::fs::create_dir(&rootfs)?;
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let blob = layout.blob_reader(layer)?;
            let tar: Box<dyn Read> = match layer.media_type.as_str() {
                "application/vnd.oci.image.layer.v1.tar"
                | "application/vnd.docker.image.rootfs.diff.tar" => Box::new(blob),
                "application/vnd.oci.image.layer.v1.tar+gzip"
                | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                    Box::new(flate2::read::GzDecoder::new(blob))
                }
                other => return Err(invalid(format!("unsupported layer type {other:?}"))),
            };
            let mut hashed = HashingReader::new(tar);
            apply_layer(&mut hashed, &rootfs)?;
            // Whatever the tar reader left unread still counts for the diff id.
            io::copy(&mut hashed, &mut io::sink())?;
            let actual = format!("sha256:{}", hex::encode(hashed.hasher.finalize()));
            if &actual != diff_id {
                return Err(invalid(format!(
                    "a layer unpacks to {actual}, not the config's {diff_id}"
                )));
            }
        }
        let unpacked = Unpacked {
            digest: digest.clone(),
            name,
            config: config.config,
        };
        let description = serde_json::to_vec_pretty(&unpacked)
            .map_err(|error| invalid(format!("cannot describe the image: {error}")))?;
        std::fs::write(staging.path().join("image.json"), description)?;
        // Whole or absent: a crash mid-unpack leaves only a staging directory.
        let staged = staging.keep();
        let target = store.join(&hex);
        if let Err(error) = std::fs::rename(&staged, &target) {
            let _ = std::fs::remove_dir_all(&staged);
            if !target.join("image.json").exists() {
                return Err(error.into());
            }
        }
        Self::open(store, &digest)?.ok_or_else(|| invalid("the unpacked image vanished"))
    }

    /// The image `digest` if it was unpacked under `store` before.
    pub fn open(store: &Path, digest: &str) -> Result<Option<Self>> {
        let dir = store.join(digest_hex(digest)?);
        let description = match std::fs::read(dir.join("image.json")) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let unpacked: Unpacked = serde_json::from_slice(&description)
            .map_err(|error| invalid(format!("{}: {error}", dir.display())))?;
        Ok(Some(Self {
            digest: unpacked.digest,
            name: unpacked.name,
            rootfs: dir.join("rootfs"),
            config: unpacked.config,
        }))
    }

    /// The manifest's digest, `sha256:…`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The reference that pins this image, `name@sha256:…`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.digest)
    }

    /// The unpacked root filesystem.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// The entry point and its arguments, as the image's config gives them.
    pub fn entry_point(&self) -> Vec<String> {
        let mut argv = self.config.entrypoint.clone().unwrap_or_default();
        argv.extend(self.config.cmd.clone().unwrap_or_default());
        argv
    }

    /// A command that runs the entry point on the image's root filesystem,
    /// confined as `confinement` says, with the image's env, then `env` on
    /// top, and nothing of this process's env; killed when dropped.
    pub fn command<'a>(
        &self,
        confinement: Confinement,
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<tokio::process::Command> {
        let argv = self.entry_point();
        let Some(program) = argv.first() else {
            return Err(invalid("the image names no entry point"));
        };
        let inside = self.inside(program)?;
        let mut command = if confinement == Confinement::Chroot {
            let mut command = tokio::process::Command::new(host_program("chroot"));
            if let Some(user) = &self.config.user {
                command.arg(format!("--userspec={user}"));
            }
            command.arg(&self.rootfs).args(&argv);
            command
        } else {
            match elf_interpreter(&inside)? {
                Some(interpreter) => {
                    let mut command = tokio::process::Command::new(self.inside(&interpreter)?);
                    command
                        .arg("--library-path")
                        .arg(self.library_path())
                        .arg(&inside)
                        .args(&argv[1..]);
                    command
                }
                None => {
                    let mut command = tokio::process::Command::new(&inside);
                    command.args(&argv[1..]);
                    command
                }
            }
        };
        command.env_clear();
        for pair in self.config.env.iter().flatten() {
            if let Some((key, value)) = pair.split_once('=') {
                command.env(key, value);
            }
        }
        command.envs(env);
        if confinement == Confinement::Loader {
            command.current_dir(&self.rootfs);
        }
        command.stdin(Stdio::null()).kill_on_drop(true);
        Ok(command)
    }

    /// `path` of the image, on this machine's file system.
    fn inside(&self, path: &str) -> Result<PathBuf> {
        let relative = Path::new(path.trim_start_matches('/'));
        if relative
            .components()
            .any(|part| !matches!(part, Component::Normal(_)))
        {
            return Err(invalid(format!(
                "an entry point outside the image: {path:?}"
            )));
        }
        Ok(self.rootfs.join(relative))
    }

    /// The directories a loader searches by default, inside the image.
    fn library_path(&self) -> String {
        let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
        [
            format!("lib/{triplet}"),
            format!("usr/lib/{triplet}"),
            "lib64".to_owned(),
            "usr/lib64".to_owned(),
            "lib".to_owned(),
            "usr/lib".to_owned(),
        ]
        .iter()
        .map(|dir| self.rootfs.join(dir).display().to_string())
        .collect::<Vec<_>>()
        .join(":")
    }
}

/// This machine's `name`, found on this process's `PATH` (a command whose
/// env is the image's would look it up on the image's `PATH`), else the
/// bare name.
fn host_program(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The program interpreter an ELF executable names (`PT_INTERP`), if any.
fn elf_interpreter(path: &Path) -> Result<Option<String>> {
    const PT_INTERP: u32 = 3;
    let bytes = std::fs::read(path)
        .map_err(|error| invalid(format!("cannot read the entry point: {error}")))?;
    let not_elf = || invalid("the entry point is not a 64-bit little-endian ELF executable");
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(not_elf());
    }
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |at: usize| -> Option<usize> {
        usize::try_from(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?)).ok()
    };
    let table = u64_at(0x20).ok_or_else(not_elf)?;
    let entry_size = usize::from(u16_at(0x36).ok_or_else(not_elf)?);
    let entries = usize::from(u16_at(0x38).ok_or_else(not_elf)?);
    for index in 0..entries {
        let header = table + index * entry_size;
        if u32_at(header).ok_or_else(not_elf)? != PT_INTERP {
            continue;
        }
        let offset = u64_at(header + 0x08).ok_or_else(not_elf)?;
        let size = u64_at(header + 0x20).ok_or_else(not_elf)?;
        let name = bytes
            .get(offset..offset.saturating_add(size))
            .ok_or_else(not_elf)?;
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        return String::from_utf8(name.to_vec())
            .map(Some)
            .map_err(|_| not_elf());
    }
    Ok(None)
}

/// An OCI image layout inside a tar archive: where each file starts.
struct Layout {
    file: File,
    entries: HashMap<String, (u64, u64)>,
}

impl Layout {
    fn read(file: File) -> Result<Self> {
        let mut archive = tar::Archive::new(BufReader::new(file));
        let mut entries = HashMap::new();
        for entry in archive
            .entries()
            .map_err(|error| invalid(format!("not a tar archive: {error}")))?
        {
            let entry = entry.map_err(|error| invalid(format!("a damaged archive: {error}")))?;
            if entry.header().entry_type().is_file() {
                let path = entry
                    .path()
                    .map_err(|error| invalid(format!("a damaged archive: {error}")))?;
                let path = path.to_string_lossy().trim_start_matches("./").to_owned();
                entries.insert(path, (entry.raw_file_position(), entry.size()));
            }
        }
        let file = archive.into_inner().into_inner();
        Ok(Self { file, entries })
    }

    fn reader(&mut self, path: &str) -> Result<io::Take<BufReader<File>>> {
        let (start, size) = *self
            .entries
            .get(path)
            .ok_or_else(|| invalid(format!("the archive has no {path}")))?;
        let mut file = self.file.try_clone()?;
        file.seek(io::SeekFrom::Start(start))?;
        Ok(BufReader::new(file).take(size))
    }

    fn json<T: for<'de> Deserialize<'de>>(&mut self, path: &str) -> Result<T> {
        let mut bytes = Vec::new();
        self.reader(path)?.read_to_end(&mut bytes)?;
        serde_json::from_slice(&bytes).map_err(|error| invalid(format!("{path}: {error}")))
    }

    /// A small blob, read whole and checked.
    fn blob(&mut self, descriptor: &Descriptor) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.blob_reader(descriptor)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// A blob, once its size and digest are checked to be the descriptor's.
    fn blob_reader(&mut self, descriptor: &Descriptor) -> Result<io::Take<BufReader<File>>> {
        let hex = digest_hex(&descriptor.digest)?;
        let path = format!("blobs/sha256/{hex}");
        let mut hashed = HashingReader::new(self.reader(&path)?);
        let size = io::copy(&mut hashed, &mut io::sink())?;
        let actual = format!("sha256:{}", hex::encode(hashed.hasher.finalize()));
        if size != descriptor.size || actual != descriptor.digest {
            return Err(invalid(format!(
                "blob {} holds {size} bytes with digest {actual}, not the {} its descriptor gives",
                descriptor.digest, descriptor.size
            )));
        }
        self.reader(&path)
    }
}

/// Hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

/// Applies one layer to `rootfs`: its files, and its whiteouts removing what
/// lower layers put there. Every path must be a plain relative one, and a
/// whiteout removes only what lies under `rootfs` through real directories
/// (never through a symlink a layer made). Set-id bits are dropped: the
/// devnet runs images it did not build.
fn apply_layer(layer: impl Read, rootfs: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(layer);
    archive.set_preserve_permissions(true);
    archive.set_mask(0o6000);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    let entries = archive
        .entries()
        .map_err(|error| invalid(format!("a damaged layer: {error}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|error| invalid(format!("a damaged layer: {error}")))?;
        let path = entry
            .path()
            .map_err(|error| invalid(format!("a damaged layer: {error}")))?
            .into_owned();
        let relative: PathBuf = path
            .components()
            .filter(|part| !matches!(part, Component::CurDir))
            .collect();
        if relative
            .components()
            .any(|part| !matches!(part, Component::Normal(_)))
        {
            return Err(invalid(format!("a layer path leaves the image: {path:?}")));
        }
        if let Some(file_name) = relative.file_name().and_then(|name| name.to_str()) {
            let whiteout = file_name == ".wh..wh..opq" || file_name.starts_with(".wh.");
            if whiteout {
                let parent = relative.parent().unwrap_or(Path::new(""));
                let Some(parent) = real_dir_inside(rootfs, parent)? else {
                    continue;
                };
                if file_name == ".wh..wh..opq" {
                    for child in std::fs::read_dir(&parent)?.flatten() {
                        remove_any(&child.path())?;
                    }
                } else {
                    let hidden = &file_name[".wh.".len()..];
                    if hidden.is_empty() || hidden == "." || hidden == ".." {
                        return Err(invalid(format!("a whiteout names no file: {path:?}")));
                    }
                    remove_any(&parent.join(hidden))?;
                }
                continue;
            }
        }
        // `unpack_in` refuses paths (and links) that would land outside rootfs.
        entry
            .unpack_in(rootfs)
            .map_err(|error| invalid(format!("cannot unpack {path:?}: {error}")))?;
    }
    Ok(())
}

/// `relative` under `rootfs` if every directory on the way is a real one (no
/// symlink), `None` if it does not exist.
fn real_dir_inside(rootfs: &Path, relative: &Path) -> Result<Option<PathBuf>> {
    let mut dir = rootfs.to_owned();
    for part in relative.components() {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(invalid(format!(
                    "a whiteout under {relative:?} goes through something not a directory"
                )));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        }
    }
    Ok(Some(dir))
}

fn remove_any(path: &Path) -> Result<()> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    Ok(removed?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_sha256_digest_pins_an_image() {
        let hex = "a".repeat(64);
        assert_eq!(
            pinned_digest(&format!("delibera-agent@sha256:{hex}")),
            Some(format!("sha256:{hex}").as_str())
        );
        assert_eq!(pinned_digest("delibera-agent:latest"), None);
        assert_eq!(pinned_digest("x@sha256:../../etc"), None);
        assert!(digest_hex("sha256:../../../etc/passwd").is_err());
    }

    #[test]
    fn the_interpreter_of_this_test_binary_is_read_from_its_elf_header() {
        let this = std::env::current_exe().unwrap();
        let interpreter = elf_interpreter(&this).unwrap();
        // A dynamically linked test binary names its loader; a static one none.
        if let Some(interpreter) = interpreter {
            assert!(Path::new(&interpreter).is_absolute(), "{interpreter}");
            assert!(Path::new(&interpreter).exists(), "{interpreter}");
        }
        assert!(elf_interpreter(Path::new("/proc/self/status")).is_err());
    }
}
