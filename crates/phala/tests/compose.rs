//! Compose rendering, image references and CVM names.

use delibera_phala::{AgentRole, CvmName, Error, ImageRef, render_compose};
use proptest::prelude::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn worker_compose_is_exact() {
    let image = ImageRef::new("ghcr.io/delibera/worker:1.2")
        .unwrap()
        .pinned(DIGEST)
        .unwrap();
    let yaml = render_compose(
        AgentRole::Worker,
        &image,
        3001,
        &["STORACHA_AGENT_PRIVATE_KEY", "NEAR_ACCOUNT_ID"],
    )
    .unwrap();
    assert_eq!(
        yaml,
        format!(
            "services:
  worker:
    image: \"ghcr.io/delibera/worker:1.2@{DIGEST}\"
    restart: always
    ports:
      - \"3001:3001\"
    volumes:
      - /var/run/dstack.sock:/var/run/dstack.sock
    environment:
      - PORT=3001
      - STORACHA_AGENT_PRIVATE_KEY=${{STORACHA_AGENT_PRIVATE_KEY}}
      - NEAR_ACCOUNT_ID=${{NEAR_ACCOUNT_ID}}
"
        )
    );
}

#[test]
fn coordinator_defaults_and_a_sealed_port() {
    let role = AgentRole::Coordinator;
    assert_eq!(role.default_port(), 3000);
    assert_eq!(AgentRole::Worker.default_port(), 3001);
    let yaml = render_compose(role, &role.default_image(), 3000, &["PORT"]).unwrap();
    assert!(yaml.starts_with("services:\n  coordinator:\n"));
    assert!(yaml.contains("      - \"3000:3000\"\n"));
    // A sealed PORT replaces the literal one.
    assert!(yaml.contains("      - PORT=${PORT}\n"));
    assert!(!yaml.contains("PORT=3000"));
}

#[test]
fn compose_rejects_keys_that_could_inject_yaml() {
    let role = AgentRole::Worker;
    for key in ["A\n    privileged: true", "A B", "A=${B}", ""] {
        assert!(
            matches!(
                render_compose(role, &role.default_image(), 3001, &[key]),
                Err(Error::InvalidEnv { .. })
            ),
            "{key:?}"
        );
    }
}

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
}

#[test]
fn cvm_name_rules() {
    for good in ["abcde", "a-b-c", "Worker1", &format!("a{}", "b".repeat(62))] {
        assert!(CvmName::new(good).is_ok(), "{good:?}");
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
            matches!(CvmName::new(bad), Err(Error::InvalidCvmName { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn unique_names_slug_the_display_name() {
    assert_eq!(
        CvmName::with_suffix(AgentRole::Worker, "  Worker Alpha!! ", "ab12cd").as_str(),
        "delibera-worker-worker-alpha-ab12cd"
    );
    assert_eq!(
        CvmName::with_suffix(AgentRole::Coordinator, "Ünïcode only ✓", "zz").as_str(),
        "delibera-coordinator-n-code-only-zz"
    );
    assert_eq!(
        CvmName::with_suffix(AgentRole::Worker, "!!!", "").as_str(),
        "delibera-worker-x"
    );
    let first = CvmName::unique(AgentRole::Worker, "Same");
    let second = CvmName::unique(AgentRole::Worker, "Same");
    assert_ne!(first, second);
}

proptest! {
    #[test]
    fn unique_names_always_pass_the_rules(display in ".*", coordinator in any::<bool>()) {
        let role = if coordinator { AgentRole::Coordinator } else { AgentRole::Worker };
        let name = CvmName::unique(role, &display);
        prop_assert_eq!(CvmName::new(name.as_str()).ok(), Some(name));
    }
}
