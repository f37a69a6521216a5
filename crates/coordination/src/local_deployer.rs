//! A `Deployer` that runs agents in this process, for the embedded default.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use delibera_ensue::Memory;
use delibera_phala::{AgentSpec, Deployer, Deployment, DeploymentStatus, EnvVar};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Agent, AgentConfig, WorkerDirectory};

/// How long teardown waits for an agent to finish its task in hand.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// An agent the local deployer started, as its journal keeps it: enough to
/// start it again, on the same port (so its registered endpoint stays true),
/// after the process restarts.
#[derive(Clone, Serialize, Deserialize)]
pub struct LocalDeploymentRecord {
    /// The deployment id handed out by `deploy`.
    pub cvm_id: String,
    /// The loopback port the agent listens on.
    pub port: u16,
    /// Worker or coordinator.
    pub role: delibera_phala::AgentRole,
    /// The agent's env, secrets included.
    pub env: Vec<EnvVar>,
}

impl std::fmt::Debug for LocalDeploymentRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // EnvVar's Debug already hides values; list names only to stay terse.
        f.debug_struct("LocalDeploymentRecord")
            .field("cvm_id", &self.cvm_id)
            .field("port", &self.port)
            .field("role", &self.role)
            .field(
                "env",
                &self.env.iter().map(|var| &var.key).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Where a [`LocalDeployer`] remembers its running agents. A Phala CVM
/// outlives the server that deployed it; in-process agents come back through
/// this journal instead. Records hold the agents' keys, so an implementation
/// must keep them as secret as the server's own (the protocol API seals them).
#[async_trait::async_trait]
pub trait DeploymentJournal: Send + Sync {
    /// Remembers (or replaces) a running agent.
    async fn save(&self, record: &LocalDeploymentRecord) -> crate::Result<()>;
    /// Forgets a torn-down agent.
    async fn remove(&self, cvm_id: &str) -> crate::Result<()>;
    /// Every remembered agent.
    async fn load(&self) -> crate::Result<Vec<LocalDeploymentRecord>>;
}

/// Starts the agent runtime in-process on `127.0.0.1` with an ephemeral port,
/// configured from the spec's env exactly as a CVM would be (the same
/// [`AgentConfig::from_lookup`] contract), so local mode exercises the
/// production agent code. `teardown` stops it. With a journal
/// ([`LocalDeployer::with_journal`]), [`LocalDeployer::restore`] brings the
/// agents back after a restart.
pub struct LocalDeployer {
    directory: Arc<dyn WorkerDirectory>,
    memory: Option<Arc<dyn Memory>>,
    journal: Option<Arc<dyn DeploymentJournal>>,
    agents: Mutex<HashMap<String, LocalAgent>>,
}

struct LocalAgent {
    endpoint_url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<crate::Result<()>>,
}

impl std::fmt::Debug for LocalDeployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDeployer")
            .field("agents", &self.lock().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn deployer_error(message: impl Into<String>) -> delibera_phala::Error {
    delibera_phala::Error::Deployer {
        message: message.into(),
    }
}

impl LocalDeployer {
    /// A deployer whose coordinators find their workers in `directory` (the
    /// server's local registry, e.g. [`RegistryWorkers`](crate::RegistryWorkers)).
    pub fn new(directory: Arc<dyn WorkerDirectory>) -> Self {
        Self {
            directory,
            memory: None,
            journal: None,
            agents: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers every started agent in `journal`, for [`LocalDeployer::restore`].
    pub fn with_journal(mut self, journal: Arc<dyn DeploymentJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Starts again every agent the journal remembers, each with its old id
    /// and port; returns how many came back. An agent whose port is now taken
    /// stays down (logged), and `status` reports it unknown, as a vanished CVM.
    pub async fn restore(&self) -> crate::Result<usize> {
        let Some(journal) = &self.journal else {
            return Ok(0);
        };
        let mut restored = 0;
        for record in journal.load().await? {
            if self.lock().contains_key(&record.cvm_id) {
                continue;
            }
            let listener =
                match TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, record.port))).await
                {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::warn!(cvm_id = %record.cvm_id, port = record.port, %error,
                            "cannot restore local agent: its port is taken");
                        continue;
                    }
                };
            match self.start(record.cvm_id.clone(), record.role, &record.env, listener) {
                Ok(_) => restored += 1,
                Err(error) => {
                    tracing::warn!(cvm_id = %record.cvm_id, %error, "cannot restore local agent");
                }
            }
        }
        Ok(restored)
    }

    /// Runs one agent on `listener` under the id `cvm_id`.
    fn start(
        &self,
        cvm_id: String,
        role: delibera_phala::AgentRole,
        env: &[EnvVar],
        listener: TcpListener,
    ) -> delibera_phala::Result<Deployment> {
        let env: HashMap<&str, &str> = env
            .iter()
            .map(|var| (var.key.as_str(), var.value.as_str()))
            .collect();
        let config = AgentConfig::from_lookup(role, |name| env.get(name).map(|v| (*v).to_owned()))
            .map_err(|error| deployer_error(error.to_string()))?;
        let address = listener
            .local_addr()
            .map_err(|error| deployer_error(error.to_string()))?;
        let endpoint_url = format!("http://{address}");
        let config = AgentConfig {
            public_url: config.public_url.or_else(|| Some(endpoint_url.clone())),
            port: address.port(),
            ..config
        };
        let did = config.did.clone();
        let mut agent = Agent::new(config)
            .map_err(|error| deployer_error(error.to_string()))?
            .with_directory(self.directory.clone());
        if let Some(memory) = &self.memory {
            agent = agent.with_memory(memory.clone());
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.serve(listener, async move {
            let _ = stopped.await;
        }));
        tracing::info!(%did, %endpoint_url, cvm_id, "local agent started");
        self.lock().insert(
            cvm_id.clone(),
            LocalAgent {
                endpoint_url: endpoint_url.clone(),
                stop,
                task,
            },
        );
        Ok(Deployment {
            cvm_id,
            app_id: did.to_string(),
            dashboard_url: endpoint_url.clone(),
            endpoint_url,
        })
    }

    /// Stops an agent and waits for it (at most [`STOP_TIMEOUT`]).
    async fn stop(&self, cvm_id: &str) -> delibera_phala::Result<()> {
        let Some(agent) = self.lock().remove(cvm_id) else {
            return Ok(()); // Already gone.
        };
        let _ = agent.stop.send(());
        match tokio::time::timeout(STOP_TIMEOUT, agent.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(deployer_error(format!(
                "agent ended with an error: {error}"
            ))),
            Ok(Err(join_error)) => Err(deployer_error(format!("agent task failed: {join_error}"))),
            Err(_) => Err(deployer_error("agent did not stop in time")),
        }
    }

    /// Agents use `memory` instead of an `EnsueClient` built from their env.
    pub fn with_memory(mut self, memory: Arc<dyn Memory>) -> Self {
        self.memory = Some(memory);
        self
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, LocalAgent>> {
        // Each critical section is one map operation, so a poisoned map is whole.
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Deployer for LocalDeployer {
    async fn deploy(&self, spec: &AgentSpec) -> delibera_phala::Result<Deployment> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(|error| deployer_error(format!("cannot bind 127.0.0.1: {error}")))?;
        let port = listener
            .local_addr()
            .map_err(|error| deployer_error(error.to_string()))?
            .port();
        let cvm_id = format!("local-{}", uuid::Uuid::new_v4().simple());
        let deployment = self.start(cvm_id.clone(), spec.role, &spec.env, listener)?;
        if let Some(journal) = &self.journal {
            let record = LocalDeploymentRecord {
                cvm_id: cvm_id.clone(),
                port,
                role: spec.role,
                env: spec.env.clone(),
            };
            if let Err(error) = journal.save(&record).await {
                // An agent the journal does not know would vanish at the next
                // restart while the registry still lists it: refuse it now.
                let _ = self.stop(&cvm_id).await;
                return Err(deployer_error(error.to_string()));
            }
        }
        Ok(deployment)
    }

    async fn status(&self, cvm_id: &str) -> delibera_phala::Result<DeploymentStatus> {
        let agents = self.lock();
        let agent = agents
            .get(cvm_id)
            .ok_or_else(|| deployer_error(format!("no local deployment {cvm_id}")))?;
        let running = !agent.task.is_finished();
        Ok(DeploymentStatus {
            cvm_id: cvm_id.to_owned(),
            status: if running { "running" } else { "stopped" }.to_owned(),
            running,
            endpoint_url: Some(agent.endpoint_url.clone()),
        })
    }

    async fn teardown(&self, cvm_id: &str) -> delibera_phala::Result<()> {
        let stopped = self.stop(cvm_id).await;
        if let Some(journal) = &self.journal {
            journal
                .remove(cvm_id)
                .await
                .map_err(|error| deployer_error(error.to_string()))?;
        }
        stopped
    }
}
