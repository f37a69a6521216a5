//! A `Deployer` that runs agents in this process, for the embedded default.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use delibera_ensue::Memory;
use delibera_phala::{AgentSpec, Deployer, Deployment, DeploymentStatus};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Agent, AgentConfig, WorkerDirectory};

/// How long teardown waits for an agent to finish its task in hand.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Starts the agent runtime in-process on `127.0.0.1` with an ephemeral port,
/// configured from the spec's env exactly as a CVM would be (the same
/// [`AgentConfig::from_lookup`] contract), so local mode exercises the
/// production agent code. `teardown` stops it.
pub struct LocalDeployer {
    directory: Arc<dyn WorkerDirectory>,
    memory: Option<Arc<dyn Memory>>,
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
            agents: Mutex::new(HashMap::new()),
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
        let env: HashMap<&str, &str> = spec
            .env
            .iter()
            .map(|var| (var.key.as_str(), var.value.as_str()))
            .collect();
        let config =
            AgentConfig::from_lookup(spec.role, |name| env.get(name).map(|v| (*v).to_owned()))
                .map_err(|error| deployer_error(error.to_string()))?;
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(|error| deployer_error(format!("cannot bind 127.0.0.1: {error}")))?;
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
        let id = format!("local-{}", uuid::Uuid::new_v4().simple());
        tracing::info!(%did, %endpoint_url, id, "local agent started");
        self.lock().insert(
            id.clone(),
            LocalAgent {
                endpoint_url: endpoint_url.clone(),
                stop,
                task,
            },
        );
        Ok(Deployment {
            cvm_id: id,
            app_id: did.to_string(),
            dashboard_url: endpoint_url.clone(),
            endpoint_url,
        })
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
}
