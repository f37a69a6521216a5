//! OCI archives unpacked for devnet CVMs: layers in order with their
//! whiteouts, every blob checked against its digest, nothing written outside
//! the image, and a stand-in holding an image refusing to boot any other.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use delibera_deploy::Deployer;
use delibera_devnet::image::AgentImage;
use delibera_devnet::phala::{PhalaDevnet, PhalaDevnetConfig};
use delibera_ensue_local::LocalEnsue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::support::within;

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A file (mode 0644) or, with `None`, a directory; contents starting with
/// `->` make a symlink to the rest.
type Entry<'a> = (&'a str, Option<&'a [u8]>);

fn layer_tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in entries {
        let mut header = tar::Header::new_gnu();
        // Written raw, so a test can name what a well-behaved builder refuses.
        let name = path.as_bytes();
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_mtime(0);
        match contents {
            Some(target) if target.starts_with(b"->") => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                header
                    .set_link_name(std::str::from_utf8(&target[2..]).unwrap())
                    .unwrap();
                header.set_cksum();
                builder.append(&header, std::io::empty()).unwrap();
            }
            Some(bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(bytes.len() as u64);
                header.set_cksum();
                builder.append(&header, *bytes).unwrap();
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                header.set_cksum();
                builder.append(&header, std::io::empty()).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// An image being put together: its layers (media type, blob, diff id).
#[derive(Default)]
struct Image {
    layers: Vec<(&'static str, Vec<u8>, String)>,
    /// Replaces a layer blob after its descriptor was written.
    tamper: Option<Vec<u8>>,
    extra_manifest: bool,
}

impl Image {
    fn layer(mut self, entries: &[Entry<'_>]) -> Self {
        let tar = layer_tar(entries);
        let diff_id = sha256(&tar);
        self.layers.push((
            "application/vnd.oci.image.layer.v1.tar+gzip",
            gzip(&tar),
            diff_id,
        ));
        self
    }

    fn plain_layer(mut self, entries: &[Entry<'_>]) -> Self {
        let tar = layer_tar(entries);
        let diff_id = sha256(&tar);
        self.layers
            .push(("application/vnd.oci.image.layer.v1.tar", tar, diff_id));
        self
    }

    /// The archive and its manifest's digest.
    fn archive(self, path: &Path) -> String {
        let mut blobs: Vec<Vec<u8>> = Vec::new();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/usr/local/bin/agent"], "Cmd": ["worker"], "User": "10001:10001"},
            "rootfs": {"type": "layers", "diff_ids": self.layers.iter().map(|(_, _, id)| id.clone()).collect::<Vec<_>>()},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|(media_type, blob, _)| {
                json!({"mediaType": media_type, "digest": sha256(blob), "size": blob.len()})
            })
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
            "layers": layers,
        }))
        .unwrap();
        let digest = sha256(&manifest);
        let entry = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "delibera-agent"}});
        let mut manifests = vec![entry.clone()];
        if self.extra_manifest {
            manifests.push(entry);
        }
        let index =
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).unwrap();
        let mut names = Vec::new();
        for (_, blob, _) in &self.layers {
            names.push(sha256(blob));
            blobs.push(blob.clone());
        }
        if let (Some(tampered), Some(last)) = (self.tamper, blobs.last_mut()) {
            *last = tampered;
        }
        names.push(sha256(&config));
        blobs.push(config);
        names.push(digest.clone());
        blobs.push(manifest);

        let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, bytes).unwrap();
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add("index.json", &index);
        for (name, blob) in names.iter().zip(&blobs) {
            add(
                &format!("blobs/sha256/{}", name.trim_start_matches("sha256:")),
                blob,
            );
        }
        builder.into_inner().unwrap().flush().unwrap();
        digest
    }
}

#[test]
fn an_archive_unpacks_its_layers_in_order_with_their_whiteouts() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.oci.tar");
    let digest = Image::default()
        .layer(&[
            ("usr/", None),
            ("usr/local/", None),
            ("usr/local/bin/", None),
            ("usr/local/bin/agent", Some(b"first")),
            ("etc/", None),
            ("etc/stale", Some(b"gone")),
            ("var/", None),
            ("var/cache/", None),
            ("var/cache/a", Some(b"a")),
        ])
        .plain_layer(&[
            ("usr/local/bin/agent", Some(b"second")),
            ("etc/.wh.stale", Some(b"")),
            ("var/cache/.wh..wh..opq", Some(b"")),
            ("var/cache/b", Some(b"b")),
        ])
        .archive(&archive);

    let store = dir.path().join("images");
    let image = AgentImage::unpack(&archive, &store).unwrap();
    assert_eq!(image.digest(), digest);
    assert_eq!(image.reference(), format!("delibera-agent@{digest}"));
    assert_eq!(image.entry_point(), ["/usr/local/bin/agent", "worker"]);
    let rootfs = image.rootfs();
    assert_eq!(
        std::fs::read(rootfs.join("usr/local/bin/agent")).unwrap(),
        b"second"
    );
    assert!(!rootfs.join("etc/stale").exists(), "whited out");
    assert!(!rootfs.join("var/cache/a").exists(), "an opaque directory");
    assert_eq!(std::fs::read(rootfs.join("var/cache/b")).unwrap(), b"b");

    // Known by its digest from now on, without the archive.
    std::fs::remove_file(&archive).unwrap();
    let opened = AgentImage::open(&store, &digest).unwrap().unwrap();
    assert_eq!(opened.rootfs(), rootfs);
    assert!(
        AgentImage::open(&store, &format!("sha256:{}", "0".repeat(64)))
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_blob_that_is_not_what_its_digest_says_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.oci.tar");
    let mut image = Image::default().layer(&[("a", Some(b"payload"))]);
    let mut tampered = image.layers[0].1.clone();
    let last = tampered.len() - 9;
    tampered[last] ^= 1;
    image.tamper = Some(tampered);
    image.archive(&archive);
    let refused = AgentImage::unpack(&archive, &dir.path().join("images")).unwrap_err();
    assert!(refused.to_string().contains("digest"), "{refused}");
    assert!(
        std::fs::read_dir(dir.path().join("images"))
            .map(|entries| entries.count())
            .unwrap_or(0)
            == 0,
        "nothing is left of a refused image"
    );
}

#[test]
fn a_layer_path_leaving_the_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.oci.tar");
    Image::default()
        .layer(&[("../../escaped", Some(b"x"))])
        .archive(&archive);
    let store = dir.path().join("deep/images");
    let refused = AgentImage::unpack(&archive, &store).unwrap_err();
    assert!(
        refused.to_string().contains("leaves the image"),
        "{refused}"
    );
    assert!(!dir.path().join("escaped").exists());
    assert!(!dir.path().join("deep/escaped").exists());
}

#[test]
fn a_whiteout_never_removes_anything_outside_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"keep").unwrap();
    let target = format!("->{}", outside.display());
    let layers: [&[Entry<'_>]; 4] = [
        &[("/outside/.wh.precious", Some(b""))],
        &[(".wh...", Some(b""))],
        &[
            ("link", Some(target.as_bytes())),
            ("link/.wh..wh..opq", Some(b"")),
        ],
        &[
            ("link", Some(target.as_bytes())),
            ("link/.wh.precious", Some(b"")),
        ],
    ];
    for (index, layer) in layers.into_iter().enumerate() {
        let archive = dir.path().join(format!("hostile-{index}.oci.tar"));
        Image::default().plain_layer(layer).archive(&archive);
        let refused = AgentImage::unpack(&archive, &dir.path().join("images"));
        assert!(refused.is_err(), "layer {index} was unpacked");
        assert_eq!(
            std::fs::read(outside.join("precious")).unwrap(),
            b"keep",
            "layer {index}"
        );
    }
}

#[test]
fn set_id_bits_are_dropped_from_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.oci.tar");
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_path("usr/bin/su").unwrap();
    header.set_mode(0o4755);
    header.set_size(1);
    header.set_cksum();
    builder.append(&header, &b"x"[..]).unwrap();
    let tar = builder.into_inner().unwrap();
    let diff_id = sha256(&tar);
    let mut image = Image::default();
    image
        .layers
        .push(("application/vnd.oci.image.layer.v1.tar", tar, diff_id));
    image.archive(&archive);
    let unpacked = AgentImage::unpack(&archive, &dir.path().join("images")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(unpacked.rootfs().join("usr/bin/su"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
}

#[test]
fn an_archive_that_is_not_one_image_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("images");
    let two = dir.path().join("two.oci.tar");
    let mut image = Image::default().layer(&[("a", Some(b"a"))]);
    image.extra_manifest = true;
    image.archive(&two);
    let refused = AgentImage::unpack(&two, &store).unwrap_err();
    assert!(refused.to_string().contains("2 manifests"), "{refused}");

    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"not an archive at all").unwrap();
    let refused = AgentImage::unpack(&junk, &store).unwrap_err();
    assert!(refused.to_string().contains("damaged archive"), "{refused}");

    let missing = AgentImage::unpack(&dir.path().join("missing.tar"), &store).unwrap_err();
    assert!(
        missing.to_string().contains("cannot open the archive"),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stand_in_holding_an_image_fails_a_cvm_naming_another() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.oci.tar");
    let loaded = Image::default()
        .layer(&[("a", Some(b"a"))])
        .archive(&archive);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let phala = PhalaDevnet::start(
        listener,
        PhalaDevnetConfig {
            data_dir: dir.path().join("phala"),
            api_key: Zeroizing::new("phak_devnet_test".into()),
            boot_delay: Duration::from_millis(10),
            image_archive: Some(archive),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        phala.loaded_image().unwrap().reference(),
        format!("delibera-agent@{loaded}")
    );
    let ensue = LocalEnsue::start(delibera_ensue_local::Config::default())
        .await
        .unwrap();
    let other = format!("ghcr.io/someone/else@sha256:{}", "ab".repeat(32));
    let (spec, _) = crate::phala::worker_spec(&ensue, 7, Some(&other));
    // As a real CVM whose image cannot be pulled: the deploy reports it.
    let refused = crate::phala::deployer(&phala, "phak_devnet_test")
        .deploy(&spec)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains(&format!("cannot pull {other}")),
        "{refused}"
    );
    within(phala.stop()).await.unwrap();
    within(ensue.stop()).await.unwrap();
}
