//! The images `scripts/build-image.sh` builds for production.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An OCI archive the script wrote, with the digest it printed last.
pub(crate) struct BuiltImage {
    /// `…/<image>.oci.tar`.
    pub(crate) archive: PathBuf,
    /// `sha256:…`.
    pub(crate) digest: String,
}

/// Whether this machine can build the image; says why not on the terminal
/// (past the test harness's capture, so a skip is never silent).
pub(crate) fn can_build() -> bool {
    let found = Command::new("buildah")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    let root = std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0);
    let why_not = if !found {
        "buildah is not installed (Debian: apt-get install buildah; .ci/run installs it)"
    } else if !root {
        "the script's buildah runs as root here (vfs storage, chroot isolation)"
    } else {
        return true;
    };
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: the images cannot be built: {why_not}"
    );
    false
}

/// The agent's image, as production deploys it into CVMs.
pub(crate) const AGENT: &str = "delibera-agent";
/// The server's image, as operators run it.
pub(crate) const PROTOCOL_API: &str = "protocol-api";

/// Runs `scripts/build-image.sh --image <image> --output <output> [args]`;
/// panics with its stderr if it fails.
pub(crate) fn build(image: &str, output: &Path, args: &[&str]) -> BuiltImage {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-image.sh");
    let run = Command::new("bash")
        .arg(&script)
        .args(["--image", image])
        .arg("--output")
        .arg(output)
        .args(args)
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "build-image.sh failed:\n{stderr}");
    let stdout = String::from_utf8(run.stdout).expect("the script prints text");
    let digest = stdout.lines().last().unwrap_or_default().to_owned();
    assert!(
        digest.len() == 71
            && digest.starts_with("sha256:")
            && digest[7..].bytes().all(|b| b.is_ascii_hexdigit()),
        "the last line is not a digest: {stdout:?}\n{stderr}"
    );
    let archive = output.join(format!("{image}.oci.tar"));
    assert!(archive.is_file(), "no archive at {}", archive.display());
    BuiltImage { archive, digest }
}
