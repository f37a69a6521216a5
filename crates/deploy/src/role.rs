//! The one role enum of the workspace: what kind of agent something is.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Which kind of agent: a coordinator runs the rounds, a worker votes in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentRole {
    /// Deliberates and votes (port 3001 by default).
    Worker,
    /// Runs the proposal rounds over its workers (port 3000 by default).
    Coordinator,
}

impl AgentRole {
    /// Both roles.
    pub const ALL: [AgentRole; 2] = [AgentRole::Worker, AgentRole::Coordinator];

    /// `worker` or `coordinator`: the wire string everywhere (API bodies,
    /// `AGENT_ROLE`, compose service names, registry `type`).
    pub fn as_str(self) -> &'static str {
        match self {
            AgentRole::Worker => "worker",
            AgentRole::Coordinator => "coordinator",
        }
    }

    /// The port the agent listens on unless told otherwise.
    pub fn default_port(self) -> u16 {
        match self {
            AgentRole::Worker => 3001,
            AgentRole::Coordinator => 3000,
        }
    }
}

impl fmt::Display for AgentRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AgentRole {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        AgentRole::ALL
            .into_iter()
            .find(|role| role.as_str() == text.trim())
            .ok_or_else(|| Error::InvalidRole {
                found: text.chars().take(40).collect(),
            })
    }
}
