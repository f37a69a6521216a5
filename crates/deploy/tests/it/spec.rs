//! Image references, deployment names and the spec's serialized form.

use delibera_deploy::{
    AgentEnv, AgentIdentity, AgentRole, AgentSpec, DeploymentName, Error, ImageRef,
};
use delibera_identity::Keypair;
use proptest::prelude::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn image_references_are_validated_and_pinned() {
    assert!(!ImageRef::new("nginx:1.27").unwrap().is_pinned());
    let pinned = ImageRef::new(&format!("nginx@{DIGEST}")).unwrap();
    assert!(pinned.is_pinned());
    // Pinning again replaces the digest.
    let other = format!("sha256:{}", "f".repeat(64));
    assert_eq!(
        pinned.pinned(&other).unwrap().as_str(),
        format!("nginx@{other}")
    );
    for bad in [
        "",
        "-nginx",
        "nginx latest",
        "nginx\"",
        "nginx@sha256:abc",
        "nginx@md5:0123",
        &format!("nginx@sha256:{}", "A".repeat(64)),
    ] {
        assert!(
            matches!(ImageRef::new(bad), Err(Error::InvalidImage { .. })),
            "{bad:?}"
        );
    }
    assert!(ImageRef::new("nginx").unwrap().pinned("latest").is_err());
    assert_eq!(
        ImageRef::default_for(AgentRole::Worker).as_str(),
        delibera_deploy::DEFAULT_WORKER_IMAGE
    );
}

#[test]
fn deployment_name_rules() {
    for good in ["abcde", "a-b-c", "Worker1", &format!("a{}", "b".repeat(62))] {
        assert!(DeploymentName::new(good).is_ok(), "{good:?}");
    }
    for bad in [
        "abcd",
        &format!("a{}", "b".repeat(63)),
        "1abcd",
        "-abcd",
        "ab--cd",
        "ab_cd",
        "abcdé",
        "abc d",
    ] {
        assert!(
            matches!(DeploymentName::new(bad), Err(Error::InvalidName { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn derived_names_are_deterministic_and_slug_the_display_name() {
    let key = "3f2a9c0e-1b7d-4e55-9a0c-7d1e2f3a4b5c";
    assert_eq!(
        DeploymentName::derive(AgentRole::Worker, "  Worker Alpha!! ", key).as_str(),
        "delibera-worker-worker-alpha-3f2a9c0e1b7d4e55"
    );
    assert_eq!(
        DeploymentName::derive(AgentRole::Worker, "  Worker Alpha!! ", key),
        DeploymentName::derive(AgentRole::Worker, "  Worker Alpha!! ", key),
    );
    assert_eq!(
        DeploymentName::derive(AgentRole::Coordinator, "Ünïcode only ✓", "zz").as_str(),
        "delibera-coordinator-n-code-only-zz"
    );
    assert_eq!(
        DeploymentName::derive(AgentRole::Worker, "!!!", "").as_str(),
        "delibera-worker-x"
    );
    // The key, not the display name, tells two deployments apart.
    assert_ne!(
        DeploymentName::derive(AgentRole::Worker, "Same", "aaaa1111"),
        DeploymentName::derive(AgentRole::Worker, "Same", "bbbb2222"),
    );
}

#[test]
fn a_spec_serializes_with_its_env_as_a_variable_list_and_reads_back() {
    let identity = AgentIdentity::from_keypair(&Keypair::from_seed(&[7; 32]));
    let env = AgentEnv::new(AgentRole::Coordinator, identity, "DAO", "lmn_key");
    let spec = AgentSpec::new(
        DeploymentName::derive(AgentRole::Coordinator, "DAO", "ab12"),
        env,
    )
    .with_image(ImageRef::new(&format!("ghcr.io/x/agent@{DIGEST}")).unwrap());
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["name"], "delibera-coordinator-dao-ab12");
    assert!(
        json["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|var| var["key"] == "AGENT_ROLE" && var["value"] == "coordinator")
    );
    let back: AgentSpec = serde_json::from_value(json).unwrap();
    assert_eq!(back, spec);
    // A stored spec with a broken name is refused, not half-read.
    let mut broken = serde_json::to_value(&spec).unwrap();
    broken["name"] = "1-bad".into();
    assert!(serde_json::from_value::<AgentSpec>(broken).is_err());
}

proptest! {
    #[test]
    fn derived_names_always_pass_the_rules(display in ".*", key in ".*", coordinator in any::<bool>()) {
        let role = if coordinator { AgentRole::Coordinator } else { AgentRole::Worker };
        let name = DeploymentName::derive(role, &display, &key);
        prop_assert_eq!(DeploymentName::new(name.as_str()).ok(), Some(name));
    }
}
