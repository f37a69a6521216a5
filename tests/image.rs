//! The agent image that production deploys: built offline and reproducibly by
//! `scripts/build-image.sh`, its entry point started from the unpacked root
//! filesystem, and the production flow on devnet run with CVMs booting it.
//! Skipped, saying so, where buildah is missing.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use delibera::devnet::image::{AgentImage, Confinement};
use delibera::devnet::{Devnet, DevnetConfig};
use delibera::identity::Keypair;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use common::image::{AGENT, BuiltImage, PROTOCOL_API, build, can_build};
use common::postgres::{fresh_schema, test_database_url};
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
        let image = build(AGENT, dir.path(), &[]);
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
    let again =
        tokio::task::spawn_blocking(move || build(AGENT, &again_path, &["--push", &destination]))
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

/// `${NAME}`, `${NAME:?message}` and `${NAME:-default}` of `text` replaced as
/// compose replaces them from `vars`; a required one missing fails the test.
fn interpolate(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("an unclosed ${") + start;
        let expression = &rest[start + 2..end];
        let (name, value) = if let Some((name, message)) = expression.split_once(":?") {
            let value = vars.get(name).filter(|value| !value.is_empty());
            (
                name,
                value
                    .unwrap_or_else(|| panic!("compose would refuse: {message}"))
                    .clone(),
            )
        } else if let Some((name, default)) = expression.split_once(":-") {
            (
                name,
                vars.get(name)
                    .cloned()
                    .unwrap_or_else(|| default.to_owned()),
            )
        } else {
            (
                expression,
                vars.get(expression).cloned().unwrap_or_default(),
            )
        };
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
            "not a variable name: {name:?}"
        );
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The environment compose gives `service`: `NAME=value` entries
/// interpolated, bare `NAME` entries passed on only when set in `vars`.
fn service_env(
    service: &serde_norway::Value,
    vars: &HashMap<String, String>,
) -> Vec<(String, String)> {
    let entries = service["environment"]
        .as_sequence()
        .expect("environment is a list");
    let mut env = Vec::new();
    for entry in entries {
        let entry = entry.as_str().expect("an environment entry is text");
        match entry.split_once('=') {
            Some((name, value)) => env.push((name.to_owned(), interpolate(value, vars))),
            None => {
                if let Some(value) = vars.get(entry) {
                    env.push((entry.to_owned(), value.clone()));
                }
            }
        }
    }
    env
}

/// The replicas' compose file, run as compose would run it as far as this
/// machine can without a container engine: both replica services started
/// from the built server image (through its own loader and libraries) with
/// exactly the environment the file gives them, on one PostgreSQL and
/// against the devnet. Every variable it sets is one the server reads;
/// both serve, one leads, and a job accepted by one is carried to the
/// wallet step and shown, secrets and all, by the other.
#[tokio::test(flavor = "multi_thread")]
async fn the_replicas_compose_file_runs_two_servers_from_the_built_image() {
    use clap::CommandFactory;

    if !can_build() {
        return;
    }
    let Some(base) = test_database_url("the replicas' compose file") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("image");
    let built = tokio::task::spawn_blocking(move || build(PROTOCOL_API, &output, &[]))
        .await
        .unwrap();
    let image = AgentImage::unpack(&built.archive, &dir.path().join("store")).unwrap();
    assert_eq!(image.entry_point(), ["/usr/local/bin/protocol-api"]);

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bins/protocol-api/compose.replicas.yaml");
    let mut compose: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    compose.apply_merge().unwrap();

    let mut config = DevnetConfig::new(dir.path().join("devnet"), 0);
    config.boot_delay = Duration::from_millis(300);
    config.block_time = Duration::from_millis(100);
    let devnet = Devnet::start(config).await.unwrap();
    let (database_url, _) = fresh_schema(&base).await;
    let mut vars: HashMap<String, String> = devnet
        .env()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    let pinned = format!("registry.example/protocol-api@{}", built.digest);
    vars.insert("PROTOCOL_API_IMAGE".into(), pinned.clone());
    vars.insert(
        "POSTGRES_PASSWORD".into(),
        hex::encode(rand::random::<[u8; 12]>()),
    );
    vars.insert(
        "PROTOCOL_API_SECRET_KEY".into(),
        hex::encode(rand::random::<[u8; 32]>()),
    );
    let settings: HashSet<String> = protocol_api::config::Config::command()
        .get_arguments()
        .filter_map(|argument| argument.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();

    let mut replicas = Vec::new();
    for name in ["replica-a", "replica-b"] {
        let service = &compose["services"][name];
        assert_eq!(
            interpolate(service["image"].as_str().unwrap(), &vars),
            pinned
        );
        let published = service["ports"][0].as_str().unwrap();
        assert!(published.ends_with(":3005"), "{name} publishes {published}");
        let mut env = service_env(service, &vars);
        for (variable, value) in &mut env {
            assert!(
                settings.contains(variable.as_str()),
                "{name} sets {variable}, which protocol-api does not read"
            );
            if variable == "DATABASE_URL" {
                // The compose network's host; here, this test's server.
                let parsed = protocol_api::store::PostgresConfig::parse(value).unwrap();
                assert_eq!(parsed.shown(), "postgres://postgres:5432/delibera");
                *value = database_url.clone();
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        env.push(("PORT".into(), port.to_string()));
        let log = dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = image
            .command(
                Confinement::Loader,
                env.iter()
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            )
            .unwrap()
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        replicas.push((child, log, format!("http://127.0.0.1:{port}")));
    }
    let log_of = |log: &std::path::Path| std::fs::read_to_string(log).unwrap_or_default();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let leading = replicas
                .iter()
                .filter(|(_, log, _)| log_of(log).contains("this replica leads"))
                .count();
            let serving = replicas
                .iter()
                .filter(|(_, log, _)| log_of(log).contains("Delibera Protocol API listening"))
                .count();
            if leading == 1 && serving == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let logs: Vec<String> = replicas.iter().map(|(_, log, _)| log_of(log)).collect();
        panic!(
            "the replicas did not come up, one leading:\n{}",
            logs.join("\n---\n")
        )
    });

    let (a, b) = (&replicas[0].2, &replicas[1].2);
    let user = devnet.user().account_id.to_string();
    let (code, accepted) = call(
        "POST",
        &format!("{b}/api/provision/coordinator"),
        Some(serde_json::json!({"displayName": "Compose DAO", "nearAccount": user, "minWorkers": 1, "maxWorkers": 5})),
    )
    .await;
    assert_eq!(code, 202, "{accepted}");
    let job = accepted["jobId"].as_str().unwrap();
    let shown = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let (code, shown) = call("GET", &format!("{a}/api/provision/status/{job}"), None).await;
            assert_eq!(code, 200, "{shown}");
            if ["awaiting_near_signature", "failed"]
                .contains(&shown["status"].as_str().unwrap_or_default())
            {
                return shown;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the job reached the wallet step");
    assert_eq!(shown["status"], "awaiting_near_signature", "{shown}");
    assert!(shown["storachaPrivateKey"].is_string(), "{shown}");
    drop(replicas);
    tokio::time::timeout(Duration::from_secs(60), devnet.stop())
        .await
        .expect("the devnet stopped")
        .unwrap();
}
