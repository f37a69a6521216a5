//! A `Deployer` that runs agents in this process, for the embedded default.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use delibera_deploy::{
    AgentEnv, AgentRole, AgentSpec, Deployer, Deployment, DeploymentName, DeploymentStatus, EnvVar,
};
use delibera_ensue::Memory;
use delibera_serve::Edges;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Agent, WorkerDirectory};

/// How long teardown waits for an agent to finish its task in hand.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The backend name in the port's errors.
const BACKEND: &str = "local agent runtime";

/// An agent the local deployer started, as its journal keeps it: enough to
/// start it again, on the same port (so its registered endpoint stays true),
/// after the process restarts.
#[derive(Clone, Serialize)]
pub struct LocalDeploymentRecord {
    /// The deployment id handed out by `deploy`.
    pub id: String,
    /// The loopback port the agent listens on.
    pub port: u16,
    /// What was deployed, the agent's env (secrets included) among it.
    pub spec: AgentSpec,
}

impl<'de> Deserialize<'de> for LocalDeploymentRecord {
    /// Also reads the records of the first releases, which kept the role and
    /// the raw env list instead of the spec.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Current {
                id: String,
                port: u16,
                spec: Box<AgentSpec>,
            },
            FirstRelease {
                cvm_id: String,
                port: u16,
                role: AgentRole,
                env: Vec<EnvVar>,
            },
        }
        match Stored::deserialize(deserializer)? {
            Stored::Current { id, port, spec } => Ok(Self {
                id,
                port,
                spec: *spec,
            }),
            Stored::FirstRelease {
                cvm_id,
                port,
                role,
                mut env,
            } => {
                if !env
                    .iter()
                    .any(|var| var.key == delibera_deploy::vars::AGENT_ROLE)
                {
                    env.push(EnvVar::new(
                        delibera_deploy::vars::AGENT_ROLE,
                        role.as_str(),
                    ));
                }
                let env = AgentEnv::try_from(env.as_slice()).map_err(serde::de::Error::custom)?;
                let name = DeploymentName::derive(role, &env.display_name, &cvm_id);
                Ok(Self {
                    id: cvm_id,
                    port,
                    spec: AgentSpec::new(name, env),
                })
            }
        }
    }
}

impl std::fmt::Debug for LocalDeploymentRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDeploymentRecord")
            .field("id", &self.id)
            .field("port", &self.port)
            .field("name", &self.spec.name)
            .field("role", &self.spec.role())
            .finish_non_exhaustive()
    }
}

/// One entry of a [`DeploymentJournal`]: a remembered agent, or the id of
/// one whose entry can no longer be read.
#[derive(Debug, Clone)]
pub enum JournalEntry {
    /// A readable entry.
    Record(Box<LocalDeploymentRecord>),
    /// An entry that cannot be decoded (damaged, or sealed under another key).
    Unreadable {
        /// The deployment id it is stored under.
        id: String,
        /// Why it cannot be read (never a secret value).
        reason: String,
    },
}

impl JournalEntry {
    /// The deployment id.
    pub fn id(&self) -> &str {
        match self {
            JournalEntry::Record(record) => &record.id,
            JournalEntry::Unreadable { id, .. } => id,
        }
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
    async fn remove(&self, id: &str) -> crate::Result<()>;
    /// Every remembered agent; an entry that cannot be decoded is reported
    /// as [`JournalEntry::Unreadable`] rather than failing the whole load.
    async fn load(&self) -> crate::Result<Vec<JournalEntry>>;
}

/// What [`LocalDeployer::restore`] did with each journal entry.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RestoreReport {
    /// Agents started again, by deployment id.
    pub restored: Vec<String>,
    /// Entries no owner claimed (orphans), removed from the journal without
    /// being started.
    pub removed: Vec<String>,
    /// Orphans that were not started but could not be removed from the
    /// journal either (the next restore tries again), with why.
    pub not_removed: Vec<(String, String)>,
    /// Owned agents that could not be started again; they stay journaled,
    /// for the owner to decide.
    pub lost: Vec<LostAgent>,
}

/// An owned agent that could not be started again.
#[derive(Debug, Clone)]
pub struct LostAgent {
    /// Its deployment id.
    pub id: String,
    /// Its deployment name, when its entry could be read.
    pub name: Option<DeploymentName>,
    /// Why it could not be started (never a secret value).
    pub reason: String,
}

/// Starts the agent runtime in-process on `127.0.0.1` with an ephemeral port,
/// configured from the spec's env exactly as a CVM would be (the agent reads
/// the same [`AgentEnv`]), so local mode exercises the production agent code.
/// Its public URL is its loopback address, which only local mode accepts.
/// `teardown` stops it. With a journal ([`LocalDeployer::with_journal`]),
/// [`LocalDeployer::restore`] brings the agents back after a restart.
pub struct LocalDeployer {
    directory: Arc<dyn WorkerDirectory>,
    memory: Option<Arc<dyn Memory>>,
    journal: Option<Arc<dyn DeploymentJournal>>,
    edges: Edges,
    agents: Mutex<HashMap<String, LocalAgent>>,
}

struct LocalAgent {
    name: DeploymentName,
    port: u16,
    endpoint_url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<crate::Result<()>>,
}

impl LocalAgent {
    /// The agent as a deployment with this id.
    fn deployment(&self, id: &str) -> Deployment {
        Deployment {
            id: id.to_owned(),
            name: self.name.clone(),
            endpoint_url: self.endpoint_url.clone(),
            dashboard_url: self.endpoint_url.clone(),
        }
    }
}

impl std::fmt::Debug for LocalDeployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDeployer")
            .field("agents", &self.lock().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn backend_error(error: impl Into<delibera_deploy::BoxError>) -> delibera_deploy::Error {
    delibera_deploy::Error::backend(BACKEND, false, error)
}

impl LocalDeployer {
    /// A deployer whose coordinators find their workers in `directory` (the
    /// server's local registry, e.g. [`RegistryWorkers`](crate::RegistryWorkers)).
    pub fn new(directory: Arc<dyn WorkerDirectory>) -> Self {
        Self {
            directory,
            memory: None,
            journal: None,
            edges: Edges::default(),
            agents: Mutex::new(HashMap::new()),
        }
    }

    /// Serves the agents' HTTP with `edges` instead of the default [`Edges`].
    pub fn with_edges(mut self, edges: Edges) -> Self {
        self.edges = edges;
        self
    }

    /// Remembers every started agent in `journal`, for [`LocalDeployer::restore`].
    pub fn with_journal(mut self, journal: Arc<dyn DeploymentJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Agents use `memory` instead of an `EnsueClient` built from their env.
    pub fn with_memory(mut self, memory: Arc<dyn Memory>) -> Self {
        self.memory = Some(memory);
        self
    }

    /// Starts again every journaled agent that `owned` claims (by deployment
    /// id and, when its entry is readable, name), each with its old id and
    /// port, and removes the others from the journal without starting them:
    /// an agent journaled just before its owner recorded it, whose owner is
    /// gone, must not run forever (an orphan whose removal fails is reported
    /// in `not_removed`, still not started). An owned agent that cannot be started (its
    /// port is taken, its entry is unreadable) is reported as lost and left
    /// in the journal; `status` reports it unknown, as a vanished CVM.
    pub async fn restore(
        &self,
        owned: impl Fn(&str, Option<&DeploymentName>) -> bool,
    ) -> crate::Result<RestoreReport> {
        let mut report = RestoreReport::default();
        let Some(journal) = &self.journal else {
            return Ok(report);
        };
        for entry in journal.load().await? {
            let name = match &entry {
                JournalEntry::Record(record) => Some(&record.spec.name),
                JournalEntry::Unreadable { .. } => None,
            };
            if !owned(entry.id(), name) {
                // An orphan is never started; failing to forget it must not
                // keep the owned agents from coming back.
                match journal.remove(entry.id()).await {
                    Ok(()) => report.removed.push(entry.id().to_owned()),
                    Err(error) => report
                        .not_removed
                        .push((entry.id().to_owned(), error.to_string())),
                }
                continue;
            }
            let record = match entry {
                JournalEntry::Record(record) => *record,
                JournalEntry::Unreadable { id, reason } => {
                    report.lost.push(LostAgent {
                        id,
                        name: None,
                        reason: format!("its journal entry cannot be read: {reason}"),
                    });
                    continue;
                }
            };
            if self.lock().contains_key(&record.id) {
                continue;
            }
            let lost = |reason: String| LostAgent {
                id: record.id.clone(),
                name: Some(record.spec.name.clone()),
                reason,
            };
            let listener =
                match TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, record.port))).await
                {
                    Ok(listener) => listener,
                    Err(error) => {
                        report.lost.push(lost(format!(
                            "its port {} cannot be bound: {error}",
                            record.port
                        )));
                        continue;
                    }
                };
            match self.start(record.id.clone(), &record.spec, listener) {
                Ok(_) => report.restored.push(record.id.clone()),
                Err(error) => report.lost.push(lost(error.to_string())),
            }
        }
        Ok(report)
    }

    /// Runs the agent of `spec` on `listener` under the id `id`.
    fn start(
        &self,
        id: String,
        spec: &AgentSpec,
        listener: TcpListener,
    ) -> delibera_deploy::Result<Deployment> {
        let address = listener.local_addr().map_err(backend_error)?;
        let endpoint_url = format!("http://{address}");
        let mut env = spec.env.clone();
        env.port = address.port();
        env.local = true;
        env.public_url = Some(
            delibera_deploy::Url::parse(&endpoint_url)
                .map_err(|error| backend_error(error.to_string()))?,
        );
        let mut agent = Agent::new(env)
            .map_err(backend_error)?
            .with_directory(self.directory.clone())
            .with_edges(self.edges.clone());
        if let Some(memory) = &self.memory {
            agent = agent.with_memory(memory.clone());
        }
        let did = agent.did().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.serve(listener, async move {
            let _ = stopped.await;
        }));
        tracing::info!(%did, %endpoint_url, id, "local agent started");
        self.lock().insert(
            id.clone(),
            LocalAgent {
                name: spec.name.clone(),
                port: address.port(),
                endpoint_url: endpoint_url.clone(),
                stop,
                task,
            },
        );
        Ok(Deployment {
            id,
            name: spec.name.clone(),
            dashboard_url: endpoint_url.clone(),
            endpoint_url,
        })
    }

    /// Stops an agent and waits for it (at most [`STOP_TIMEOUT`]).
    async fn stop(&self, id: &str) -> delibera_deploy::Result<()> {
        let Some(agent) = self.lock().remove(id) else {
            return Ok(()); // Already gone.
        };
        let _ = agent.stop.send(());
        match tokio::time::timeout(STOP_TIMEOUT, agent.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(backend_error(error)),
            Ok(Err(join_error)) => Err(backend_error(format!("agent task failed: {join_error}"))),
            Err(_) => Err(backend_error("agent did not stop in time")),
        }
    }

    /// Saves agent `id`'s journal entry, or stops the agent and fails: an
    /// agent the journal does not know would vanish at the next restart
    /// while the registry still lists it.
    async fn journal_or_stop(
        &self,
        id: &str,
        port: u16,
        spec: &AgentSpec,
    ) -> delibera_deploy::Result<()> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let record = LocalDeploymentRecord {
            id: id.to_owned(),
            port,
            spec: spec.clone(),
        };
        if let Err(error) = journal.save(&record).await {
            let _ = self.stop(id).await;
            return Err(backend_error(error));
        }
        Ok(())
    }

    /// The running agent deployed under `name`, and its port.
    fn running_named(&self, name: &DeploymentName) -> Option<(Deployment, u16)> {
        self.lock()
            .iter()
            .find(|(_, agent)| agent.name == *name)
            .map(|(id, agent)| (agent.deployment(id), agent.port))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, LocalAgent>> {
        // Each critical section is one map operation, so a poisoned map is whole.
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Deployer for LocalDeployer {
    async fn deploy(&self, spec: &AgentSpec) -> delibera_deploy::Result<Deployment> {
        // The name is the idempotency key here too. The agent's journal
        // entry is saved again (the save replaces it): the deploy that
        // started it may have been dropped while its save waited.
        if let Some((existing, port)) = self.running_named(&spec.name) {
            self.journal_or_stop(&existing.id, port, spec).await?;
            return Ok(existing);
        }
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(backend_error)?;
        let port = listener.local_addr().map_err(backend_error)?.port();
        let id = format!("local-{}", uuid::Uuid::new_v4().simple());
        let deployment = self.start(id.clone(), spec, listener)?;
        self.journal_or_stop(&id, port, spec).await?;
        Ok(deployment)
    }

    async fn find(&self, spec: &AgentSpec) -> delibera_deploy::Result<Option<Deployment>> {
        Ok(self
            .running_named(&spec.name)
            .map(|(deployment, _)| deployment))
    }

    async fn status(&self, id: &str) -> delibera_deploy::Result<DeploymentStatus> {
        let agents = self.lock();
        let agent = agents
            .get(id)
            .ok_or_else(|| backend_error(format!("no local deployment {id}")))?;
        let running = !agent.task.is_finished();
        Ok(DeploymentStatus {
            id: id.to_owned(),
            status: if running { "running" } else { "stopped" }.to_owned(),
            running,
            endpoint_url: Some(agent.endpoint_url.clone()),
        })
    }

    async fn teardown(&self, id: &str) -> delibera_deploy::Result<()> {
        let stopped = self.stop(id).await;
        if let Some(journal) = &self.journal {
            journal.remove(id).await.map_err(backend_error)?;
        }
        stopped
    }

    async fn teardown_named(&self, name: &DeploymentName) -> delibera_deploy::Result<bool> {
        match self.running_named(name) {
            Some((deployment, _)) => self.teardown(&deployment.id).await.map(|()| true),
            None => Ok(false),
        }
    }
}
