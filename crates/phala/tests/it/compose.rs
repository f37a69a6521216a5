//! Compose rendering.

use delibera_deploy::{AgentRole, ImageRef};
use delibera_phala::{Error, render_compose};

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
    let yaml = render_compose(role, &ImageRef::default_for(role), 3000, &["PORT"]).unwrap();
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
                render_compose(role, &ImageRef::default_for(role), 3001, &[key]),
                Err(Error::InvalidEnv { .. })
            ),
            "{key:?}"
        );
    }
}
