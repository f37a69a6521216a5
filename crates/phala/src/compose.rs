//! The docker compose file of one agent.

use delibera_deploy::{AgentRole, ImageRef, validate_env_key};

use crate::error::{Error, Result};

/// The path of the dstack guest-agent socket, mounted into every agent container.
pub const DSTACK_SOCKET: &str = "/var/run/dstack.sock";

/// Renders the compose file of one agent: the role's service with `image`, the
/// port published as `port:port`, the dstack socket mounted, `restart: always`,
/// `PORT` set, and every name in `secret_keys` passed through as `KEY=${KEY}`
/// so the sealed env reaches the container.
///
/// ```
/// use delibera_deploy::{AgentRole, ImageRef};
/// use delibera_phala::render_compose;
///
/// # fn main() -> delibera_phala::Result<()> {
/// let role = AgentRole::Worker;
/// let yaml = render_compose(role, &ImageRef::default_for(role), role.default_port(), &["NEAR_ACCOUNT_ID"])?;
/// assert!(yaml.contains("      - NEAR_ACCOUNT_ID=${NEAR_ACCOUNT_ID}\n"));
/// assert!(yaml.contains("      - \"3001:3001\"\n"));
/// # Ok(())
/// # }
/// ```
pub fn render_compose<S: AsRef<str>>(
    role: AgentRole,
    image: &ImageRef,
    port: u16,
    secret_keys: &[S],
) -> Result<String> {
    if port == 0 {
        return Err(Error::InvalidEnv {
            reason: "the port must not be 0".to_owned(),
        });
    }
    for key in secret_keys {
        validate_env_key(key.as_ref()).map_err(|error| Error::InvalidEnv {
            reason: error.to_string(),
        })?;
    }
    let service = role.as_str();
    let mut yaml = format!(
        "services:\n  {service}:\n    image: \"{image}\"\n    restart: always\n    ports:\n      - \"{port}:{port}\"\n    volumes:\n      - {DSTACK_SOCKET}:{DSTACK_SOCKET}\n    environment:\n"
    );
    // A sealed PORT wins over the literal one, so the two never disagree.
    if !secret_keys.iter().any(|key| key.as_ref() == "PORT") {
        yaml.push_str(&format!("      - PORT={port}\n"));
    }
    for key in secret_keys {
        let key = key.as_ref();
        yaml.push_str(&format!("      - {key}=${{{key}}}\n"));
    }
    Ok(yaml)
}
