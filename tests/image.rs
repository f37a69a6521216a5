//! The agent image that production deploys: built offline and reproducibly by
//! `scripts/build-image.sh`, its entry point started from the unpacked root
//! filesystem, and the production flow on devnet run with CVMs booting it.
//! Skipped, saying so, where buildah is missing.

mod common;

use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use delibera::devnet::image::{AgentImage, Confinement};
use delibera::devnet::{Devnet, DevnetConfig};
use delibera::identity::Keypair;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use common::image::{BuiltImage, build, can_build};
use common::{Server, call, run_production_flow};

#[test]
#[ignore = "the server half of the end-to-end tests; started by them"]
fn protocol_api_process() {
    common::protocol_api_process();
}

/// One build per test binary, in a directory that outlives the tests.
fn built() -> &'static BuiltImage {
    static BUILT: OnceLock<(tempfile::TempDir, BuiltImage)> = OnceLock::new();
    let (_, image) = BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let image = build(dir.path(), &[]);
        (dir, image)
    });
    image
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_builds_reproducibly_and_its_entry_point_answers_with_its_did() {
    if !can_build() {
        return;
    }
    let first = tokio::task::spawn_blocking(built).await.unwrap();
    let again_dir = tempfile::tempdir().unwrap();
    let again_path = again_dir.path().to_owned();
    // Built again and pushed, to an OCI layout here as to a registry there.
    let pushed = again_dir.path().join("pushed");
    let destination = format!("oci:{}:delibera-agent", pushed.display());
    let again = tokio::task::spawn_blocking(move || build(&again_path, &["--push", &destination]))
        .await
        .unwrap();
    assert_eq!(first.digest, again.digest, "two builds of one commit");
    let index: Value =
        serde_json::from_slice(&std::fs::read(pushed.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], first.digest, "{index}");

    let store = tempfile::tempdir().unwrap();
    let image = AgentImage::unpack(&first.archive, store.path()).unwrap();
    assert_eq!(image.digest(), first.digest, "the archive's manifest");
    assert_eq!(image.entry_point(), ["/usr/local/bin/delibera-agent"]);
    assert!(
        image
            .rootfs()
            .join("usr/local/bin/delibera-agent")
            .is_file(),
        "the binary is in the root filesystem"
    );

    // A worker configured as a CVM configures it: by its env only.
    let keypair = Keypair::generate();
    let ensue = delibera::ensue_local::LocalEnsue::start(
        delibera::ensue_local::Config::default().with_addr("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let key = keypair.to_ucanto_string();
    let env = [
        ("AGENT_ROLE", "worker"),
        ("STORACHA_AGENT_PRIVATE_KEY", key.as_str()),
        ("ENSUE_URL", ensue.url()),
        ("ENSUE_API_KEY", ensue.api_key().expose()),
        ("PORT", "0"),
    ];
    // Inside its root filesystem (chroot) where this test runs as root, and
    // through the image's own loader and libraries in any case.
    let mut confinements = vec![Confinement::Loader];
    if Confinement::for_this_process() == Confinement::Chroot {
        confinements.push(Confinement::Chroot);
    }
    for confinement in confinements {
        let mut child = image
            .command(confinement, env)
            .unwrap()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
            .await
            .expect("the agent printed where it listens")
            .unwrap();
        let Some(line) = line else {
            let output = child.wait_with_output().await.unwrap();
            panic!(
                "{confinement:?}: the agent exited: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ready: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(ready["did"], keypair.did().to_string(), "{ready}");
        let (code, root) = call("GET", &format!("http://127.0.0.1:{}/", ready["port"]), None).await;
        assert_eq!(code, 200, "{confinement:?}: {root}");
        assert_eq!(root["did"], keypair.did().to_string(), "{root}");
        assert_eq!(root["role"], "worker", "{root}");
        child.kill().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_production_flow_runs_on_devnet_with_cvms_booting_the_built_image() {
    if !can_build() {
        return;
    }
    let built = tokio::task::spawn_blocking(built).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = DevnetConfig::new(dir.path().join("devnet"), 0);
    config.boot_delay = Duration::from_millis(300);
    config.block_time = Duration::from_millis(100);
    config.image_archive = Some(built.archive.clone());
    let devnet = Devnet::start(config).await.unwrap();
    let image = devnet.agent_image();
    assert!(image.ends_with(&format!("@{}", built.digest)), "{image}");
    let server = Server::start(&devnet, &dir.path().join("api"), &[]);

    let deliberated = run_production_flow(&devnet, &server).await;

    // The agents that voted are processes started from the image's root
    // filesystem, and the jobs name the image they deployed.
    let images = dir.path().join("devnet/phala/images");
    let from_image = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|process| std::fs::read_link(process.path().join("exe")).ok())
        .filter(|exe| exe.starts_with(&images))
        .count();
    assert!(
        from_image >= 2,
        "{from_image} agent processes from the image"
    );
    assert_eq!(
        deliberated.worker_status["image"], image,
        "{}",
        deliberated.worker_status
    );
    server.kill();
    tokio::time::timeout(Duration::from_secs(60), devnet.stop())
        .await
        .expect("the devnet stopped")
        .unwrap();
}
