//! Every transition of a provisioning job, in one place.
//!
//! The runner moves a job through its steps in the background, committing
//! each transition before the next step starts, so a restart resumes from the
//! last finished step. Registration moves a job out of the wallet step with a
//! compare-and-set, so two calls cannot both register it. Routes only
//! translate HTTP into calls of [`JobMachine`].
//!
//! Every outside side effect is keyed by a name derived from the job and
//! adopted when a resumed step finds it (the deployment by its name, the
//! embedded Ensue org by the credentials chosen before creating it), and the
//! job's record is written before and after each one, so a kill at any
//! instant does not fail the job. Nothing the steps make is leaked either,
//! with one exception the service imposes: a hosted Ensue shows a new org's
//! key only in its answer, so an org whose answer was lost (a kill between
//! creating it and recording it) cannot be adopted; the step counts every
//! attempt before making it and registers the next name, and the orphaned
//! org stays with the hosted service.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use delibera_backoff::Backoff;
use delibera_deploy::{
    AgentEnv, AgentIdentity, AgentRole, AgentSpec, DeploymentName, StorachaGrant, WorkerBounds,
};
use delibera_ensue::keys::{self, AgentField};
use delibera_identity::{Did, Keypair};
use delibera_near::{CoordinatorClaim, CoordinatorRegistration, WorkerClaim, WorkerRegistration};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::error::JobError;
use super::model::{IdempotencyKey, Job, JobStatus, JobTag, NewJob};
use crate::ports::{OrgCredentials, Ports, Settings};
use crate::store::{JobStore, LeaderLock, OrgKeys, Started, StatusFollower, StoreError};

/// How many names a coordinator's Ensue org registration tries.
const MAX_ORG_ATTEMPTS: u32 = 5;

/// How often, at most, health-gate progress is written to the job.
const PROGRESS_SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// How many jobs one scan claims at most, of each kind.
const CLAIM_BATCH: i64 = 64;

/// How often, at most, an interrupted teardown of an expired job's
/// deployment is tried again.
const TEARDOWN_RETRY: Duration = Duration::from_secs(60);

/// How long after a deploy failed a deployment it may have made, whose id
/// it never learned, is looked for by name: one whose creation was not
/// answered can show up in the backend's list only later.
const LEFT_BEHIND_WATCH: Duration = Duration::from_secs(30 * 60);

/// A job [`JobMachine::start`] returns.
#[derive(Debug)]
pub struct StartedJob {
    /// The job.
    pub job: Job,
    /// Whether an earlier request with the same idempotency key started it.
    pub replayed: bool,
}

/// What the wallet step hands over: the transaction hash, and for a
/// coordinator the contract its factory made.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// The wallet's transaction, if the caller passed one.
    pub tx_hash: Option<String>,
    /// A coordinator's factory-made contract, if the caller named one.
    pub contract_address: Option<delibera_identity::AccountId>,
}

/// Why a step did not finish.
enum StepError {
    /// The step failed; the text becomes the job's error.
    Failed(String),
    /// The store failed: the job is driven again from its last committed
    /// step once the store works (a full disk passes by itself).
    Store(StoreError),
}

impl From<String> for StepError {
    fn from(message: String) -> Self {
        StepError::Failed(message)
    }
}

/// Owns every transition of every job.
#[derive(Clone)]
pub struct JobMachine {
    jobs: JobStore,
    org_keys: OrgKeys,
    ports: Arc<Ports>,
    settings: Arc<Settings>,
    runner: Arc<Runner>,
    /// Places for jobs in their first steps, the ones this machine's CPU
    /// does ([`runs_here`]); see [`Settings::jobs_beginning_at_once`].
    beginning: Arc<tokio::sync::Semaphore>,
    /// Wakes the expiry sweeper when a job fails with a teardown still to
    /// do, so it is tried now rather than at the next expiry.
    teardown_due: Arc<tokio::sync::Notify>,
}

/// The jobs this process works on (drives, or registers), so none is
/// worked on twice at once here, and each run can be stopped when its lease
/// is lost.
#[derive(Default)]
struct Runner {
    state: std::sync::Mutex<Working>,
    next_token: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Working {
    runs: std::collections::HashMap<Uuid, Work>,
    /// Runs aborted while their task was running: a call of theirs may
    /// still land, so their jobs' leases must run out, not be given up.
    aborted: std::collections::HashSet<u64>,
    /// Set once this process stops working on jobs (it is shutting down):
    /// nothing new is begun, and drivers stop at their next step.
    stopped: bool,
    /// Jobs whose run holds something a service showed once and is waiting
    /// to store it: a lease keeper that cannot renew leaves those runs be
    /// (see [`Runner::stop_all`]).
    shielded: std::collections::HashSet<Uuid>,
}

/// While held, job `id`'s run is not stopped for leases that could not be
/// renewed ([`Runner::shield`]).
struct Shield<'a> {
    runner: &'a Runner,
    id: Uuid,
}

impl Drop for Shield<'_> {
    fn drop(&mut self) {
        self.runner.state().shielded.remove(&self.id);
    }
}

/// One job's run in this process.
struct Work {
    /// Tells this run from a later one of the same job.
    token: u64,
    /// Stops the task doing it (once it is spawned).
    task: Option<tokio::task::AbortHandle>,
}

impl Working {
    /// Aborts `work`'s task (already taken out of `runs`); whether it was
    /// still running (a run whose task is not recorded yet counts as
    /// running: it may have begun). Only a stopping process asks
    /// (`take_aborted`) which runs these were, so only then are they noted.
    fn abort(&mut self, work: &Work) -> bool {
        let running = match &work.task {
            Some(task) => {
                let running = !task.is_finished();
                task.abort();
                running
            }
            None => true,
        };
        if running && self.stopped {
            self.aborted.insert(work.token);
        }
        running
    }
}

/// A run as the runner lists it: the job, and the run's token.
type Run = (Uuid, u64);

impl Runner {
    fn state(&self) -> std::sync::MutexGuard<'_, Working> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn token(&self) -> u64 {
        self.next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks job `id` as worked on here; `None` if it is already, or if
    /// this process stopped working on jobs.
    fn begin(&self, id: Uuid) -> Option<u64> {
        use std::collections::hash_map::Entry;
        let token = self.token();
        let mut state = self.state();
        if state.stopped {
            return None;
        }
        match state.runs.entry(id) {
            Entry::Occupied(_) => None,
            Entry::Vacant(vacant) => {
                vacant.insert(Work { token, task: None });
                Some(token)
            }
        }
    }

    /// Marks job `id` as worked on here by a new run, whatever run is
    /// marked (a driver that just brought it to the wallet step may not
    /// have unmarked it yet).
    fn begin_anew(&self, id: Uuid) -> u64 {
        let token = self.token();
        self.state().runs.insert(id, Work { token, task: None });
        token
    }

    /// Records the task doing run `token` of job `id`; aborts it if the run
    /// was stopped before its task was recorded.
    fn attach(&self, id: Uuid, token: u64, task: tokio::task::AbortHandle) {
        let mut state = self.state();
        match state.runs.get_mut(&id).filter(|work| work.token == token) {
            Some(work) => work.task = Some(task),
            None => task.abort(),
        }
    }

    /// Run `token` of job `id` is over.
    fn end(&self, id: Uuid, token: u64) {
        let mut state = self.state();
        if state.runs.get(&id).is_some_and(|work| work.token == token) {
            state.runs.remove(&id);
        }
    }

    /// The runs here now.
    fn runs(&self) -> Vec<Run> {
        self.state()
            .runs
            .iter()
            .map(|(id, work)| (*id, work.token))
            .collect()
    }

    fn len(&self) -> usize {
        self.state().runs.len()
    }

    fn is_stopped(&self) -> bool {
        self.state().stopped
    }

    /// Stops run `token` of job `id`, if it is still the job's run here;
    /// returns whether a task was still doing it.
    fn stop(&self, id: Uuid, token: u64) -> bool {
        let mut state = self.state();
        if state.runs.get(&id).is_none_or(|work| work.token != token) {
            return false;
        }
        state
            .runs
            .remove(&id)
            .is_some_and(|work| state.abort(&work))
    }

    /// Stops every run here but the shielded ones; returns how many tasks
    /// were still running. A shielded run only waits to make a write fenced
    /// by its lease: stopping it would lose for good what a service showed
    /// once, while letting it be costs nothing (its write fails if another
    /// replica has claimed the job since).
    fn stop_all(&self) -> usize {
        let mut state = self.state();
        let stopping: Vec<Uuid> = state
            .runs
            .keys()
            .filter(|id| !state.shielded.contains(id))
            .copied()
            .collect();
        let runs: Vec<Work> = stopping
            .iter()
            .filter_map(|id| state.runs.remove(id))
            .collect();
        runs.into_iter().filter(|work| state.abort(work)).count()
    }

    /// Shields job `id`'s run from [`Self::stop_all`] until the guard drops.
    fn shield(&self, id: Uuid) -> Shield<'_> {
        self.state().shielded.insert(id);
        Shield { runner: self, id }
    }

    /// Whether some run of job `id` is going on here.
    fn has(&self, id: Uuid) -> bool {
        self.state().runs.contains_key(&id)
    }

    /// Whether run `token` of job `id` is still going on here.
    fn is_running(&self, id: Uuid, token: u64) -> bool {
        self.state()
            .runs
            .get(&id)
            .is_some_and(|work| work.token == token)
    }

    /// Whether run `token` was aborted while running; forgets it.
    fn take_aborted(&self, token: u64) -> bool {
        self.state().aborted.remove(&token)
    }

    /// Begins nothing more; returns the runs there are.
    fn close(&self) -> Vec<Run> {
        self.state().stopped = true;
        self.runs()
    }
}

impl JobMachine {
    /// A machine over the stores and the outside services.
    pub fn new(
        jobs: JobStore,
        org_keys: OrgKeys,
        ports: Arc<Ports>,
        settings: Arc<Settings>,
    ) -> Self {
        let beginning = Arc::new(tokio::sync::Semaphore::new(
            settings.jobs_beginning_at_once.max(1),
        ));
        Self {
            jobs,
            org_keys,
            ports,
            settings,
            runner: Arc::default(),
            beginning,
            teardown_due: Arc::default(),
        }
    }

    /// A job by id; a text that is no job id is simply not found.
    pub async fn get(&self, id: &str) -> Result<Job, JobError> {
        let not_found = || JobError::NotFound(id.to_owned());
        let uuid = Uuid::parse_str(id.trim()).map_err(|_| not_found())?;
        self.jobs.get(uuid).await?.ok_or_else(not_found)
    }

    /// What the status route answers for a job, as of its last commit (the
    /// store's in-memory view on SQLite, the database on PostgreSQL); a text
    /// that is no job id is simply not found.
    pub async fn status(&self, id: &str) -> Result<axum::body::Bytes, JobError> {
        let not_found = || JobError::NotFound(id.to_owned());
        let uuid = Uuid::parse_str(id.trim()).map_err(|_| not_found())?;
        self.jobs.status(uuid).await?.ok_or_else(not_found)
    }

    /// Follows a job's status documents as they are committed (the status
    /// route's pushed form), from the current one or after the event a
    /// client saw last.
    pub async fn follow(
        &self,
        id: &str,
        last_event_id: Option<&str>,
    ) -> Result<StatusFollower, JobError> {
        let not_found = || JobError::NotFound(id.to_owned());
        let uuid = Uuid::parse_str(id.trim()).map_err(|_| not_found())?;
        self.jobs
            .follow(uuid, last_event_id)
            .await?
            .ok_or_else(not_found)
    }

    /// Stores a new job and starts it in the background. Under an
    /// idempotency key, a retry of the same request gets the job the first
    /// one started (stored with the key in one transaction, so a job exists
    /// only with its key), and another request under the key is refused.
    pub async fn start(
        &self,
        new: NewJob,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<StartedJob, JobError> {
        let job = Job::new(new.clone(), Utc::now());
        let Some(key) = idempotency_key else {
            self.jobs.insert(&job).await?;
            self.spawn(job.clone());
            return Ok(StartedJob {
                job,
                replayed: false,
            });
        };
        match self
            .jobs
            .insert_idempotent(&job, key.digest(), new.fingerprint())
            .await?
        {
            Started::New => {
                self.spawn(job.clone());
                Ok(StartedJob {
                    job,
                    replayed: false,
                })
            }
            Started::Earlier {
                job_id,
                same_request,
            } => self.earlier(job_id, same_request).await,
        }
    }

    /// The job an earlier request with this idempotency key started, if
    /// any: a retry that can skip the checks a new job needs.
    pub async fn replay(
        &self,
        idempotency_key: &IdempotencyKey,
        new: &NewJob,
    ) -> Result<Option<StartedJob>, JobError> {
        match self
            .jobs
            .started_under_key(idempotency_key.digest(), new.fingerprint())
            .await?
        {
            None | Some(Started::New) => Ok(None),
            Some(Started::Earlier {
                job_id,
                same_request,
            }) => self.earlier(job_id, same_request).await.map(Some),
        }
    }

    async fn earlier(&self, job_id: Uuid, same_request: bool) -> Result<StartedJob, JobError> {
        if !same_request {
            return Err(JobError::IdempotencyKeyReused);
        }
        let job = self
            .jobs
            .get(job_id)
            .await?
            .ok_or_else(|| JobError::NotFound(job_id.to_string()))?;
        Ok(StartedJob {
            job,
            replayed: true,
        })
    }

    /// Runs (or resumes) a job, as it was last committed, in the background,
    /// unless it is being driven here already.
    pub fn spawn(&self, job: Job) {
        self.spawn_driver(job.id, Some(job));
    }

    /// Drives job `id` in the background from `committed` (read from the
    /// store when `None`), unless this process drives it already.
    /// Returns whether it was begun.
    fn spawn_driver(&self, id: Uuid, committed: Option<Job>) -> bool {
        let Some(token) = self.runner.begin(id) else {
            return false;
        };
        let machine = self.clone();
        // Under a burst, accepted jobs wait for a place among the jobs
        // beginning. What a driver holds while it runs (its steps' futures,
        // over 10 KB) is made once it has one, so a waiting job costs only
        // its boxed record.
        let committed = committed.map(Box::new);
        let drive = async move {
            let mut place = match &committed {
                Some(job) if runs_here(job.status) => {
                    // Never closed, so never an error.
                    machine.beginning.clone().acquire_owned().await.ok()
                }
                _ => None,
            };
            let committed = committed.map(|job| *job);
            Box::pin(machine.drive_through_storage_outages(id, committed, &mut place)).await;
            machine.runner.end(id, token);
        };
        let task = if self.settings.background_drivers {
            super::background::spawn(drive)
        } else {
            tokio::spawn(drive)
        };
        self.runner.attach(id, token, task.abort_handle());
        true
    }

    /// How many jobs this process works on now (drives, or registers).
    pub fn jobs_worked_on(&self) -> usize {
        self.runner.len()
    }

    /// Whether other processes share the store (PostgreSQL replicas).
    pub fn is_shared(&self) -> bool {
        self.jobs.is_shared()
    }

    /// Makes this process the leader: waits for the store's leader lock (at
    /// once, unless replicas share the store). Where this process owns the
    /// store it then resumes every job as after a restart
    /// ([`Self::resume_all`]); where replicas share it, the jobs are
    /// claimed under leases by every replica ([`Self::start_claiming`]),
    /// and the leader judges the stored records, retries pending
    /// announcements, and expires jobs left at the wallet step. Returns the
    /// lock and how many jobs were resumed. Once [`LeaderLock::lost`]
    /// answers, another replica may take those sweeps over: the process
    /// must stop them, which it does by stopping.
    pub async fn lead(&self) -> Result<(LeaderLock, usize), StoreError> {
        let lock = self.jobs.leader_lock().await?;
        if !lock.is_shared() {
            let resumed = self.resume_all().await?;
            return Ok((lock, resumed));
        }
        // A passing store fault here is waited out: returning it would stop
        // the whole replica, requests and all.
        crate::store::until_stored(
            &self.settings.storage_retry,
            || self.take_up_the_sweeps(),
            |error| tracing::warn!(%error, "the new leader waits for its store before its first sweeps"),
        )
        .await?;
        self.spawn_expiry_sweeper();
        Ok((lock, 0))
    }

    /// What a new leader of replicas does first: judges the stored records
    /// (only the leader does, so during a rolling upgrade an older replica
    /// never fails the jobs a newer release wrote) and retries pending
    /// announcements.
    async fn take_up_the_sweeps(&self) -> Result<(), StoreError> {
        for job in self.jobs.fail_unreadable().await? {
            tracing::warn!(job = %JobTag::of(job.id), reason = %job.reason,
                "a job's stored record cannot be read: the job is marked failed and will not resume");
        }
        self.resume_announcements().await
    }

    /// What a server process does with its jobs: claims them with the
    /// other replicas where they share the store
    /// ([`Self::start_claiming`]), waits for the leader lock
    /// ([`Self::lead`]), purges finished jobs older than `retention`, and
    /// returns, with why, only once the lock is lost — when the process
    /// must stop, so the replica leading next never sweeps beside it.
    pub async fn run_while_leading(&self, retention: Duration) -> Result<String, StoreError> {
        self.start_claiming();
        if self.is_shared() {
            tracing::info!(
                "replicas share the jobs: this one carries on the jobs it accepts or claims; \
                 waiting for the leader lock (its holder expires jobs left at the wallet step \
                 and retries teardowns and announcements)"
            );
        }
        let (mut lock, resumed) = self.lead().await?;
        self.spawn_purger(retention);
        if lock.is_shared() {
            tracing::info!("this replica leads");
        } else {
            tracing::info!(resumed, "this process runs the jobs");
        }
        Ok(lock.lost().await)
    }

    /// Where replicas share the store, makes this one carry jobs on under
    /// leases: it already drives the jobs it accepts (each leased to it
    /// when stored); from now on it also claims, every
    /// `Settings::job_scan_interval`, the jobs whose lease ran out (a dead
    /// replica's) and the registrations nobody finishes, and it renews
    /// every lease it holds, stopping the work on any job whose lease it
    /// lost or can no longer be sure of. Nothing where this process owns
    /// the store (it drives every job; [`Self::resume_all`] after a restart).
    pub fn start_claiming(&self) {
        let Some(lease) = self.jobs.job_lease() else {
            return;
        };
        self.spawn_lease_keeper(lease);
        let machine = self.clone();
        tokio::spawn(async move {
            let driven: Vec<JobStatus> = JobStatus::ALL
                .into_iter()
                .filter(|status| status.is_runner_owned())
                .collect();
            while !machine.runner.is_stopped() {
                let claimed = async {
                    for job in machine.jobs.claim(&driven, CLAIM_BATCH).await? {
                        tracing::info!(job = %JobTag::of(job.id), status = job.status.as_str(),
                            "claimed a job whose lease ran out; carrying it on");
                        let id = job.id;
                        if !machine.spawn_driver(id, Some(job)) {
                            machine.give_up_unbegun(id).await?;
                        }
                    }
                    for job in machine
                        .jobs
                        .claim(&[JobStatus::Registering], CLAIM_BATCH)
                        .await?
                    {
                        let id = job.id;
                        if !machine.finish_abandoned_registration(job) {
                            machine.give_up_unbegun(id).await?;
                        }
                    }
                    Ok::<_, StoreError>(())
                };
                if let Err(error) = claimed.await {
                    tracing::warn!(%error, "looking for jobs to carry on failed; trying again");
                }
                tokio::time::sleep(machine.settings.job_scan_interval).await;
            }
        });
    }

    /// Stops working on jobs, for a process shutting down: nothing new is
    /// begun or claimed, and each driver stops before its next step. Where
    /// replicas share the store, the leases of the jobs whose work stopped
    /// by itself within `Settings::handover_wait` are given up, so another
    /// replica carries them on at once from their last committed step;
    /// work still going on then (a long wait for an agent's health, an
    /// outside call) is aborted and its leases left to run out, as after a
    /// kill, so a call in flight is never repeated beside it. Returns how
    /// many jobs were handed over.
    pub async fn stop_working(&self) -> Result<usize, StoreError> {
        let runs = self.runner.close();
        if !self.is_shared() {
            return Ok(0);
        }
        let deadline = tokio::time::Instant::now() + self.settings.handover_wait;
        while runs
            .iter()
            .any(|(id, token)| self.runner.is_running(*id, *token))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut handed = Vec::new();
        for (id, token) in runs {
            // Ended by itself: the job is at a step's end. Stopped now, or
            // aborted earlier by a lost lease: a call may be in flight.
            if !self.runner.stop(id, token) && !self.runner.take_aborted(token) {
                handed.push(id);
            }
        }
        self.jobs.release(&handed).await?;
        Ok(handed.len())
    }

    /// Gives up the lease of a job claimed but not begun because this
    /// process is stopping (a run of it here, if any, keeps it: that run is
    /// `stop_working`'s to hand over).
    async fn give_up_unbegun(&self, id: Uuid) -> Result<(), StoreError> {
        if self.runner.is_stopped() && !self.runner.has(id) {
            self.jobs.release(&[id]).await?;
        }
        Ok(())
    }

    /// Renews this process's leases every third of `lease` (a fifteenth
    /// after a failed renewal). Work on a job whose lease another replica
    /// holds now, or that is gone, is stopped at once; while the store
    /// cannot be reached, all work stops a sixth of `lease` before
    /// the leases could have run out (as this process's clock measures
    /// from the last renewal it sent), so no replica claiming one after
    /// finds this one still at it.
    fn spawn_lease_keeper(&self, lease: Duration) {
        let machine = self.clone();
        let interval = lease / 3;
        tokio::spawn(async move {
            let mut renewed = tokio::time::Instant::now();
            // After a failed renewal the next comes sooner, on a fresh
            // connection, while there is still time before `stop_at`.
            let mut wait = interval;
            loop {
                let stop_at = renewed + lease - lease / 6;
                tokio::time::sleep_until(stop_at.min(tokio::time::Instant::now() + wait)).await;
                wait = interval / 5;
                let sent = tokio::time::Instant::now();
                let runs = machine.runner.runs();
                let held: Vec<Uuid> = runs.iter().map(|(id, _)| *id).collect();
                match tokio::time::timeout_at(stop_at, machine.jobs.renew(&held)).await {
                    Ok(Ok(lost)) => {
                        renewed = sent;
                        wait = interval;
                        // Only runs whose job another replica holds, or that
                        // is gone: a run whose own last write cleared its
                        // lease is finishing (its writes stay fenced).
                        let lost: std::collections::HashSet<Uuid> = lost.into_iter().collect();
                        for (id, token) in runs.into_iter().filter(|(id, _)| lost.contains(id)) {
                            if machine.runner.stop(id, token) {
                                tracing::info!(job = %JobTag::of(id),
                                    "another replica holds the job's lease now; stopped working on it here");
                            }
                        }
                        continue;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "renewing the job leases failed; trying again");
                    }
                    Err(_) => {}
                }
                if tokio::time::Instant::now() >= stop_at {
                    let stopped = machine.runner.stop_all();
                    if stopped > 0 {
                        tracing::warn!(
                            stopped,
                            "the job leases could not be renewed in time: stopped working on their jobs; \
                             whichever replica claims them next carries them on"
                        );
                    }
                    // Whatever this process holds now was leased since.
                    renewed = tokio::time::Instant::now();
                }
            }
        });
    }

    /// Drives a job; while its store cannot be written (a full disk), waits
    /// as `Settings::storage_retry` says and drives it again from its last
    /// committed step, so the job goes on by itself once space returns.
    async fn drive_through_storage_outages(
        &self,
        id: Uuid,
        mut committed: Option<Job>,
        place: &mut Option<OwnedSemaphorePermit>,
    ) {
        let mut outage_retries = 0;
        loop {
            match self.drive_from(id, committed.take(), place).await {
                Ok(()) => break,
                Err(error) if error.is_transient() => {
                    outage_retries += 1;
                    if outage_retries == 1 {
                        tracing::warn!(job = %JobTag::of(id), %error,
                            "the job waits for its store: it goes on once the store can be written again");
                    }
                    tokio::time::sleep(self.settings.storage_retry.delay(outage_retries)).await;
                }
                Err(StoreError::LeaseLost { .. }) => {
                    tracing::info!(job = %JobTag::of(id),
                        "the job's lease is another replica's now; it carries the job on");
                    return;
                }
                Err(error) => {
                    tracing::error!(job = %JobTag::of(id), %error, "provisioning runner stopped");
                    return;
                }
            }
        }
        if outage_retries > 0 {
            tracing::info!(job = %JobTag::of(id), outage_retries, "the store took writes again; the job went on");
        }
    }

    /// After a restart: finishes the registrations the last process did not
    /// (from the registry's state: the registrar confirms what the wallet
    /// signed, or the job goes back to the wallet step), resumes every job
    /// the runner owns and every pending announcement, and starts the expiry
    /// sweeper. Returns how many jobs were resumed.
    pub async fn resume_all(&self) -> Result<usize, StoreError> {
        for job in self.jobs.in_status(vec![JobStatus::Registering]).await? {
            self.finish_abandoned_registration(job);
        }
        self.resume_announcements().await?;
        let jobs = self.jobs.resumable().await?;
        let resumed = jobs.len();
        for job in jobs {
            tracing::info!(job = %JobTag::of(job.id), status = job.status.as_str(), "resuming provisioning job");
            self.spawn(job);
        }
        self.spawn_expiry_sweeper();
        Ok(resumed)
    }

    /// Retries, in the background, announcing every complete job's agent
    /// that is not announced yet.
    async fn resume_announcements(&self) -> Result<(), StoreError> {
        for job in self.jobs.in_status(vec![JobStatus::Complete]).await? {
            if job.announce_pending {
                self.spawn_announcer(job.id);
            }
        }
        Ok(())
    }

    /// Finishes a registration nobody is finishing (the process that took
    /// the call stopped, or lost the job's lease), unless this process is
    /// finishing it already or stopping; returns whether it was begun.
    fn finish_abandoned_registration(&self, job: Job) -> bool {
        let Some(token) = self.runner.begin(job.id) else {
            return false;
        };
        tracing::info!(job = %JobTag::of(job.id), "registration was interrupted; finishing it");
        let id = job.id;
        let registration = self.spawn_registration(job, None, token);
        tokio::spawn(async move {
            match registration.await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::info!(job = %JobTag::of(id), %error, "the interrupted registration did not complete; back at the wallet step")
                }
                Err(error) if error.is_cancelled() => {}
                Err(error) => {
                    tracing::warn!(job = %JobTag::of(id), %error, "the interrupted registration's task failed")
                }
            }
        });
        true
    }

    /// After a restart: the deployer could not bring back the deployment
    /// `id` (named `name`, when known). A job still before the wallet step
    /// that never recorded it simply deploys again; any other unfinished
    /// job whose deployment it is fails, saying why, and the deployment is
    /// torn down. A complete job keeps it (a later restart may succeed).
    pub async fn fail_lost_deployment(
        &self,
        id: &str,
        name: Option<&DeploymentName>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let owner = self
            .jobs
            .in_status(JobStatus::ALL.to_vec())
            .await?
            .into_iter()
            .find(|job| {
                job.cvm_id.as_deref() == Some(id)
                    || name.is_some_and(|name| *name == job.deployment_name())
            });
        let Some(mut job) = owner else {
            return Ok(());
        };
        match job.status {
            JobStatus::Complete => {
                tracing::warn!(job = %JobTag::of(job.id), deployment = id, reason,
                    "the registered agent of a complete job could not be started again; a later restart will try again");
            }
            JobStatus::Failed => self.tear_down_lost(id).await,
            JobStatus::DeployingPhala if job.cvm_id.is_none() => {
                tracing::warn!(job = %JobTag::of(job.id), deployment = id, reason,
                    "a deployment the job had not recorded could not be started again; it is replaced");
                self.tear_down_lost(id).await;
            }
            from => {
                tracing::warn!(job = %JobTag::of(job.id), deployment = id, reason, status = from.as_str(),
                    "the job's agent could not be started again; the job fails");
                job.error = Some(format!(
                    "the agent could not be started again after the server restarted: {reason}"
                ));
                self.commit(&mut job, JobStatus::Failed).await?;
                self.tear_down_lost(id).await;
            }
        }
        Ok(())
    }

    /// Removes what is left of a deployment that could not be brought back.
    async fn tear_down_lost(&self, id: &str) {
        if let Err(error) = self.ports.deployer.teardown(id).await {
            tracing::warn!(deployment = %id, %error, "could not tear down a lost deployment");
        }
    }

    /// Purges finished jobs older than `retention`, now and then every hour.
    pub fn spawn_purger(&self, retention: Duration) {
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let cutoff = Utc::now()
                    - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
                match jobs.purge_finished(cutoff).await {
                    Ok(0) => {}
                    Ok(purged) => {
                        tracing::info!(purged, "purged finished jobs past their retention")
                    }
                    Err(error) => tracing::warn!(%error, "purging finished jobs failed"),
                }
            }
        });
    }

    /// Expires jobs left at the wallet step for longer than
    /// [`Settings::job_expiry`], now and whenever the next one falls due,
    /// and finishes teardowns a restart interrupted.
    pub fn spawn_expiry_sweeper(&self) {
        let machine = self.clone();
        tokio::spawn(async move {
            loop {
                let next = match machine.expire_due().await {
                    Ok(next) => next,
                    Err(error) => {
                        tracing::warn!(%error, "expiring jobs failed; trying again later");
                        TEARDOWN_RETRY
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(next) => {}
                    () = machine.teardown_due.notified() => {}
                }
            }
        });
    }

    /// Expires every job due now and retries every unfinished teardown;
    /// returns how long until the next sweep is needed.
    pub async fn expire_due(&self) -> Result<Duration, StoreError> {
        let expiry = self.settings.job_expiry;
        let now = Utc::now();
        // A job reaching the wallet step later falls due no sooner than this.
        let mut next = expiry;
        for job in self
            .jobs
            .in_status(vec![JobStatus::AwaitingNearSignature])
            .await?
        {
            let waited = (now - job.updated_at).to_std().unwrap_or_default();
            match expiry.checked_sub(waited).filter(|left| !left.is_zero()) {
                Some(left) => next = next.min(left),
                None => self.expire(job).await?,
            }
        }
        for job in self.jobs.in_status(vec![JobStatus::Failed]).await? {
            if job.deployment_teardown_pending && !self.tear_down_pending(job).await? {
                next = next.min(TEARDOWN_RETRY);
            }
        }
        Ok(next)
    }

    /// Fails a job nobody registered in time and tears its deployment down
    /// (the job says so first, so a restart in between finishes the teardown).
    async fn expire(&self, mut job: Job) -> Result<(), StoreError> {
        job.status = JobStatus::Failed;
        job.progress = None;
        job.error = Some(expiry_message(self.settings.job_expiry, false));
        job.deployment_teardown_pending = true;
        job.updated_at = Utc::now();
        // A registration that started meanwhile wins.
        if !self
            .jobs
            .save_if_status(&job, JobStatus::AwaitingNearSignature)
            .await?
        {
            return Ok(());
        }
        log_transition(job.id, JobStatus::AwaitingNearSignature, JobStatus::Failed);
        tracing::info!(job = %JobTag::of(job.id), "job expired at the wallet step; tearing its deployment down");
        self.tear_down_pending(job).await?;
        Ok(())
    }

    /// Tears down the deployment of a failed job marked for it and records
    /// that; returns whether it is done (a failed teardown is tried again
    /// later). An expired job's error then says its deployment was torn
    /// down; any other failure keeps its error.
    async fn tear_down_pending(&self, mut job: Job) -> Result<bool, StoreError> {
        // Without an id, the deploy failed after it may have made one: it
        // is looked for by the job's deployment name until one is found or
        // the watch is over.
        let torn_down = match &job.cvm_id {
            Some(id) => self.ports.deployer.teardown(id).await.map(|()| true),
            None => {
                self.ports
                    .deployer
                    .teardown_named(&job.deployment_name())
                    .await
            }
        };
        match torn_down {
            Err(error) => {
                let deployment = job
                    .cvm_id
                    .clone()
                    .unwrap_or_else(|| job.deployment_name().to_string());
                tracing::warn!(job = %JobTag::of(job.id), %deployment, %error, "tearing down a failed job's deployment failed; will try again");
                return Ok(false);
            }
            Ok(false)
                if (Utc::now() - job.updated_at).to_std().unwrap_or_default()
                    < LEFT_BEHIND_WATCH =>
            {
                return Ok(false);
            }
            Ok(_) => {}
        }
        job.deployment_teardown_pending = false;
        if job
            .error
            .as_deref()
            .is_some_and(|error| error.starts_with(EXPIRED))
        {
            job.error = Some(expiry_message(self.settings.job_expiry, true));
        }
        self.jobs.save(&job).await?;
        tracing::info!(job = %JobTag::of(job.id), "a failed job's deployment was torn down");
        Ok(true)
    }

    /// Moves `job` to `to` and commits it; the one place a transition is made.
    async fn commit(&self, job: &mut Job, to: JobStatus) -> Result<(), StoreError> {
        let from = self.commit_unlogged(job, to).await?;
        log_transition(job.id, from, to);
        Ok(())
    }

    /// [`Self::commit`] for a caller that logs the transition itself;
    /// returns the status the job left.
    async fn commit_unlogged(&self, job: &mut Job, to: JobStatus) -> Result<JobStatus, StoreError> {
        let from = job.status;
        job.status = to;
        job.progress = None;
        job.updated_at = Utc::now();
        self.jobs.save_held(job).await?;
        Ok(from)
    }

    /// [`Self::commit`], waiting out a store that refuses writes for now (a
    /// full disk, an I/O error): for a transition that
    /// records work already done outside (a registration), which a full
    /// disk must not strand. `stalled` hears the first error waited out.
    async fn commit_when_writable(
        &self,
        job: &mut Job,
        to: JobStatus,
        stalled: &mut Option<tokio::sync::oneshot::Sender<StoreError>>,
    ) -> Result<(), StoreError> {
        let from = job.status;
        let mut retries = 0;
        loop {
            job.status = from;
            match self.commit(job, to).await {
                Err(error) if error.is_transient() => {
                    if let Some(stalled) = stalled.take() {
                        let _ = stalled.send(error.duplicate());
                    }
                    retries += 1;
                    if retries == 1 {
                        tracing::warn!(job = %JobTag::of(job.id), %error, to = to.as_str(),
                            "the transition waits for its store: it is saved once the store can be written again");
                    }
                    tokio::time::sleep(self.settings.storage_retry.delay(retries)).await;
                }
                // A failed try may have committed, its answer lost; a
                // transition out of the worked-on statuses then gave the
                // lease up, and this try is refused. The job as stored says.
                Err(error @ StoreError::LeaseLost { .. }) if retries > 0 => {
                    return match self.jobs.get(job.id).await? {
                        Some(stored) if stored.status == to => {
                            *job = stored;
                            Ok(())
                        }
                        _ => Err(error),
                    };
                }
                other => return other,
            }
        }
    }

    /// Drives one job, as stored, until it waits for a person or ends.
    pub async fn drive(&self, id: Uuid) -> Result<(), StoreError> {
        self.drive_from(id, None, &mut None).await
    }

    /// Drives job `id` from `committed` (what was last committed; read
    /// from the store when `None`). The job is read once: its driver is the
    /// only writer of a job in a status the runner owns (where replicas
    /// share the store, every write is fenced by the job's lease), so after
    /// each commit the job in hand is what the store holds.
    /// A place among the jobs beginning, if the job holds one, is given up
    /// at its first step that waits on the outside.
    async fn drive_from(
        &self,
        id: Uuid,
        mut committed: Option<Job>,
        place: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<(), StoreError> {
        // The agent's identity as made by this run, so building its env does
        // not derive the key again from its stored text.
        let mut made_identity = None;
        // Whether this run moved the job into its current status: then its
        // step has never been tried, here or anywhere (the job is this
        // run's alone), and has no earlier try's leftovers to look for.
        let mut first_try = false;
        loop {
            let mut job = match committed.take() {
                Some(job) => job,
                None => match self.jobs.get(id).await? {
                    Some(job) => job,
                    None => return Ok(()),
                },
            };
            if !runs_here(job.status) {
                drop(place.take());
            }
            // A process shutting down hands the job over at a step's end.
            if !job.status.is_runner_owned() || self.runner.is_stopped() {
                return Ok(());
            }
            let tried = job.status;
            match self.step(&mut job, &mut made_identity, first_try).await {
                Ok(next) if tried == JobStatus::ProvisioningEnsue => {
                    // The org's key may be one the service showed once: a
                    // store outage must not lose it and make another org,
                    // nor may a lease keeper that cannot renew stop this.
                    let _shield = self.runner.shield(id);
                    self.commit_when_writable(&mut job, next, &mut None).await?;
                    first_try = next != tried;
                }
                Ok(next) => {
                    self.commit(&mut job, next).await?;
                    first_try = next != tried;
                }
                Err(StepError::Store(error)) => return Err(error),
                Err(StepError::Failed(message)) => {
                    job.error = Some(message);
                    let from = self.commit_unlogged(&mut job, JobStatus::Failed).await?;
                    crate::metrics::job_transition(from, JobStatus::Failed);
                    // One line per failed job: its error is in its record.
                    tracing::info!(job = %JobTag::of(id), step = from.as_str(),
                        error = job.error.as_deref().unwrap_or_default(), "provisioning job failed");
                    // Tried here first, since only one replica sweeps; if
                    // it is not done, the sweeper here tries again soon.
                    if job.deployment_teardown_pending {
                        let done = self
                            .tear_down_pending(job.clone())
                            .await
                            .unwrap_or_else(|error| {
                                tracing::warn!(job = %JobTag::of(id), %error, "recording a teardown failed; the sweeper tries again");
                                false
                            });
                        if !done {
                            self.teardown_due.notify_one();
                        }
                    }
                }
            }
            committed = Some(job);
        }
    }

    /// Performs the job's current step and returns the next status. The job
    /// may be changed along the way; errors are the text shown in its `error`.
    /// `made_identity` keeps the identity the identity step made, for the
    /// steps after it in the same run; `first_try` says this run moved the
    /// job into its status, so no earlier try left anything behind.
    async fn step(
        &self,
        job: &mut Job,
        made_identity: &mut Option<AgentIdentity>,
        first_try: bool,
    ) -> Result<JobStatus, StepError> {
        match job.status {
            JobStatus::GeneratingIdentity => {
                let identity = AgentIdentity::from_keypair(&Keypair::generate());
                job.secrets.storacha_private_key = Some(identity.private_key().to_owned());
                if job.role == AgentRole::Coordinator {
                    job.coordinator_did = Some(identity.did().clone());
                }
                job.agent_did = Some(identity.did().clone());
                *made_identity = Some(identity);
                Ok(JobStatus::CreatingSpace)
            }
            JobStatus::CreatingSpace => {
                let did = agent_did(job)?;
                let delegation = self
                    .ports
                    .delegator
                    .delegate_space_access(&did)
                    .await
                    .map_err(|error| format!("Storacha delegation failed: {error}"))?;
                job.space_did = Some(delegation.space_did);
                job.delegation = Some(delegation.proof);
                Ok(match job.role {
                    AgentRole::Coordinator => JobStatus::ProvisioningEnsue,
                    AgentRole::Worker => JobStatus::PreparingPhala,
                })
            }
            JobStatus::ProvisioningEnsue => self.provision_ensue(job).await,
            JobStatus::PreparingPhala => {
                self.remember_org(job).await.map_err(StepError::Store)?;
                job.secrets.spec = Some(self.agent_spec(job, made_identity.take()).await?);
                Ok(JobStatus::DeployingPhala)
            }
            JobStatus::DeployingPhala => Ok(self.deploy(job, first_try).await?),
            JobStatus::WaitingForUrl => Ok(self.wait_for_health(job).await?),
            JobStatus::AwaitingNearSignature
            | JobStatus::Registering
            | JobStatus::Complete
            | JobStatus::Failed => Ok(job.status),
        }
    }

    /// Registers the coordinator's Ensue org, under a name derived from the
    /// job. Where the server may choose the org's credentials (the embedded
    /// Ensue), it keeps them in the job before the first call, and a call
    /// repeated after a crash or a transient failure adopts the org the
    /// earlier one made. Where the service issues the key (hosted Ensue), it
    /// is shown once, so an attempt whose answer was lost leaves an org
    /// nobody can use: each attempt is counted in the job before it is made,
    /// and a later one registers under the next name.
    /// A store failure is no failure of the job: the step is driven again.
    async fn provision_ensue(&self, job: &mut Job) -> Result<JobStatus, StepError> {
        let did = agent_did(job)?;
        let base = ensue_org_name(&job.display_name, &did);
        let pauses = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        // Credentials kept by an earlier run of this step: its org, if it
        // made one, answers to them, so the same name is registered again.
        let mut same_name = job.ensue_org_attempts > 0 && chosen_org_credentials(job).is_some();
        let mut round = 0;
        loop {
            round += 1;
            if !same_name {
                job.ensue_org_attempts += 1;
                if chosen_org_credentials(job).is_none()
                    && let Some(chosen) = self.ports.ensue.choose_org_credentials()
                {
                    keep_org_credentials(job, chosen);
                }
                self.jobs.save_held(job).await.map_err(StepError::Store)?;
            }
            let attempt = job.ensue_org_attempts;
            let org_name = match attempt {
                1 => base.clone(),
                n => format!("{base}-{n}"),
            };
            let chosen = chosen_org_credentials(job);
            match self
                .ports
                .ensue
                .register_org(&org_name, chosen.as_ref())
                .await
            {
                Ok(org) => {
                    // A hosted org's key is not shown again: the job's
                    // commit that follows (waiting out store faults) is its
                    // first write, and holds everything the answer said.
                    job.ensue_org_name = Some(org_name);
                    keep_org_credentials(job, org);
                    return Ok(JobStatus::PreparingPhala);
                }
                Err(delibera_ensue::Error::OrgNameTaken { .. }) if attempt < MAX_ORG_ATTEMPTS => {
                    tracing::info!(job = %JobTag::of(job.id), attempt, org = %org_name, "the Ensue org name is taken; trying the next one");
                    same_name = false;
                }
                Err(error)
                    if error.is_retryable()
                        && round < MAX_ORG_ATTEMPTS
                        && (chosen.is_some() || attempt < MAX_ORG_ATTEMPTS) =>
                {
                    tracing::info!(job = %JobTag::of(job.id), attempt, %error, "Ensue org registration will be tried again");
                    same_name = chosen.is_some();
                    tokio::time::sleep(pauses.delay(round)).await;
                }
                Err(error) => {
                    return Err(StepError::Failed(format!(
                        "Ensue org registration failed: {error}"
                    )));
                }
            }
        }
    }

    /// Keeps a coordinator's Ensue org where the workers provisioned for it
    /// find its key. Written from the job's committed record, so a kill
    /// before this write only repeats it.
    async fn remember_org(&self, job: &Job) -> Result<(), StoreError> {
        let (Some(did), Some(org_name), Some(api_key)) = (
            job.coordinator_did
                .as_ref()
                .filter(|_| job.role == AgentRole::Coordinator),
            &job.ensue_org_name,
            &job.secrets.ensue_api_key,
        ) else {
            return Ok(());
        };
        self.org_keys.put(did.as_str(), org_name, api_key).await
    }

    /// Deploys the spec `preparing_phala` built, or adopts the deployment an
    /// interrupted attempt made under the same name.
    async fn deploy(&self, job: &mut Job, first_try: bool) -> Result<JobStatus, String> {
        if job.cvm_id.is_some() {
            return Ok(JobStatus::WaitingForUrl);
        }
        if job.legacy_deployment_mark.is_some() {
            return Err(format!(
                "the server stopped while deploying this {role} agent; it was not redeployed to avoid \
                 paying twice. Check the deployment dashboard for a {role} CVM named after `{}`, remove \
                 any leftover, and provision again",
                job.display_name,
                role = job.role,
            ));
        }
        let spec = self.spec_of(job).await?;
        let deployer = &self.ports.deployer;
        // Only an earlier try of this step (before a restart, a takeover or
        // a store outage) can have made a deployment under the job's name.
        let found = if first_try {
            None
        } else {
            match deployer.find(&spec).await {
                Ok(found) => found,
                // The earlier try's deployment may run, unseen: the failed
                // job is marked so it is torn down.
                Err(error) => {
                    return Err(mark_left_behind(
                        job,
                        "looking for an earlier deployment failed",
                        error,
                        true,
                    ));
                }
            }
        };
        let deployment = match found {
            Some(deployment) => {
                tracing::info!(job = %JobTag::of(job.id), id = %deployment.id, "adopting the deployment made before a restart");
                deployment
            }
            None => deployer
                .deploy(&spec)
                .await
                .map_err(|error| mark_left_behind(job, "deployment failed", error, false))?,
        };
        job.cvm_id = Some(deployment.id);
        job.endpoint = Some(deployment.endpoint_url);
        job.dashboard_url = Some(deployment.dashboard_url);
        Ok(JobStatus::WaitingForUrl)
    }

    async fn wait_for_health(&self, job: &mut Job) -> Result<JobStatus, String> {
        let did = agent_did(job)?;
        let endpoint = job
            .endpoint
            .clone()
            .ok_or("no endpoint was recorded for the deployment")?;
        let cvm_id = job.cvm_id.clone().ok_or("no deployment id was recorded")?;
        // The deadline counts from when the job entered this step, across restarts.
        let waited = (Utc::now() - job.updated_at).to_std().unwrap_or_default();
        let remaining = self.settings.health_timeout.saturating_sub(waited);

        let jobs = self.jobs.clone();
        let mut progress_job = job.clone();
        let mut last_save = tokio::time::Instant::now();
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let saver = tokio::spawn(async move {
            while let Some(text) = progress_rx.recv().await {
                if last_save.elapsed() >= PROGRESS_SAVE_INTERVAL {
                    progress_job.progress = Some(text);
                    // Progress only; `updated_at` keeps marking when the wait began.
                    if let Err(error) = jobs.save_held(&progress_job).await {
                        tracing::warn!(job = %JobTag::of(progress_job.id), %error,
                            "could not record the health wait's progress; the wait goes on");
                    }
                    last_save = tokio::time::Instant::now();
                }
            }
        });
        let mut on_progress = move |progress: &delibera_deploy::HealthProgress| {
            let _ = progress_tx.send(format_wait(waited + progress.elapsed));
        };
        let result = self
            .ports
            .health_gate
            .wait(
                &self.ports.http,
                &endpoint,
                &did,
                remaining,
                &mut on_progress,
            )
            .await;
        // Dropping the closure drops the sender, which ends the saver.
        drop(on_progress);
        let _ = saver.await;
        match result {
            Ok(_) => Ok(JobStatus::AwaitingNearSignature),
            Err(error) => {
                // Never ask the user to pay for a dead endpoint: tear it down,
                // now or (marked on the failed job) by the expiry sweeper.
                let teardown = match self.ports.deployer.teardown(&cvm_id).await {
                    Ok(()) => "the deployment was torn down".to_owned(),
                    Err(teardown_error) => {
                        job.deployment_teardown_pending = true;
                        format!("tearing the deployment down also failed: {teardown_error}")
                    }
                };
                Err(format!(
                    "the agent never became healthy at {endpoint}: {error}; {teardown}"
                ))
            }
        }
    }

    /// The spec `preparing_phala` stored, or (for a job stored before specs
    /// were kept) the same spec built again.
    async fn spec_of(&self, job: &Job) -> Result<AgentSpec, String> {
        match &job.secrets.spec {
            Some(spec) => Ok(spec.clone()),
            None => self.agent_spec(job, None).await,
        }
    }

    /// The deployment spec of a job: its deterministic name, the role's
    /// image and the agent's whole env. `made` is the identity this run
    /// made, used if it is the one the job holds; otherwise the identity is
    /// read from the stored key.
    async fn agent_spec(
        &self,
        job: &Job,
        made: Option<AgentIdentity>,
    ) -> Result<AgentSpec, String> {
        let private_key = job
            .secrets
            .storacha_private_key
            .as_deref()
            .ok_or("the agent's key is missing")?;
        let identity = match made {
            Some(identity)
                if identity.private_key() == private_key
                    && job.agent_did.as_ref() == Some(identity.did()) =>
            {
                identity
            }
            _ => AgentIdentity::from_ucanto(private_key)
                .map_err(|error| format!("the stored agent key is unusable: {error}"))?,
        };
        let ensue_api_key = match job.role {
            AgentRole::Coordinator => job
                .secrets
                .ensue_api_key
                .clone()
                .ok_or("the Ensue org key is missing")?,
            AgentRole::Worker => {
                let coordinator = job
                    .coordinator_did
                    .as_ref()
                    .ok_or("the coordinator DID is missing")?;
                // A coordinator provisioned here shares its org with its workers.
                match self
                    .org_keys
                    .get(coordinator.as_str())
                    .await
                    .map_err(|error| error.to_string())?
                {
                    Some((_, key)) => key.to_string(),
                    None => self.settings.ensue_api_key.to_string(),
                }
            }
        };
        let mut env = AgentEnv::new(job.role, identity, job.display_name.clone(), ensue_api_key);
        env.ensue_url = self.ports.ensue.base_url().clone();
        env.owner = Some(job.near_account.clone());
        env.coordinator_did = job
            .coordinator_did
            .clone()
            .filter(|_| job.role == AgentRole::Worker);
        if let (Some(delegation), Some(space_did)) = (&job.delegation, &job.space_did) {
            env.storacha = Some(StorachaGrant {
                delegation: delegation.clone(),
                space_did: space_did.clone(),
            });
        }
        if let (Some(min), Some(max)) = (job.min_workers, job.max_workers) {
            env.worker_bounds = Some(WorkerBounds { min, max });
        }
        let chain = &self.settings.agent_chain;
        env.near_rpc_urls = chain.near_rpc_urls.clone();
        env.registry_contract = chain.registry_contract.clone();
        env.coordinator_contract = match job.role {
            AgentRole::Coordinator => job
                .contract_address
                .clone()
                .or_else(|| chain.coordinator_contract.clone()),
            AgentRole::Worker => chain.coordinator_contract.clone(),
        };
        Ok(
            AgentSpec::new(job.deployment_name(), env)
                .with_image(self.settings.image_for(job.role)),
        )
    }

    /// Finishes a job after the wallet step: moves it from
    /// `awaiting_near_signature` to `registering` (once), then to `complete`
    /// if the registrar confirms the registration and the agent is announced,
    /// else back to the wallet step with the reason. The work runs detached
    /// from the caller, so a caller hanging up cannot strand the job.
    pub async fn register(
        &self,
        id: &str,
        role: AgentRole,
        registration: Registration,
    ) -> Result<Job, JobError> {
        let mut job = self.get(id).await?;
        if job.role != role {
            return Err(JobError::WrongRole {
                job: job.id,
                role: job.role,
                route: match job.role {
                    AgentRole::Coordinator => "/api/provision/coordinator-register",
                    AgentRole::Worker => "/api/provision/register",
                },
            });
        }
        if job.status != JobStatus::AwaitingNearSignature {
            return Err(JobError::NotAwaitingSignature {
                job: job.id,
                status: job.status,
            });
        }
        job.status = JobStatus::Registering;
        job.tx_hash = registration
            .tx_hash
            .map(|hash| hash.trim().to_owned())
            .filter(|hash| !hash.is_empty());
        if registration.contract_address.is_some() {
            job.contract_address = registration.contract_address;
        }
        job.updated_at = Utc::now();
        // The registration's lease is this process's from here on.
        if !self
            .jobs
            .take_if_status(&job, JobStatus::AwaitingNearSignature)
            .await?
        {
            // Another registration, or the expiry sweeper, moved it first.
            return Err(
                match self.jobs.get(job.id).await?.map(|stored| stored.status) {
                    Some(JobStatus::Registering) | None => {
                        JobError::AlreadyRegistering { job: job.id }
                    }
                    Some(status) => JobError::NotAwaitingSignature {
                        job: job.id,
                        status,
                    },
                },
            );
        }
        log_transition(
            job.id,
            JobStatus::AwaitingNearSignature,
            JobStatus::Registering,
        );

        // The registration goes on detached; if its store cannot be written,
        // the caller gets the full-disk answer after a bounded wait instead
        // of waiting for the disk.
        let id = job.id;
        let token = self.runner.begin_anew(id);
        let (stalled_tx, stalled_rx) = tokio::sync::oneshot::channel();
        let mut registration = self.spawn_registration(job, Some(stalled_tx), token);
        let wait = self.settings.register_storage_wait;
        let stalled = async move {
            match stalled_rx.await {
                Ok(error) => {
                    tokio::time::sleep(wait).await;
                    error
                }
                // The registration ended without waiting for its store.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = &mut registration => match joined {
                Ok(registered) => registered,
                // Stopped here (its lease was lost, or this process is
                // stopping): whoever holds the job next finishes it.
                Err(error) if error.is_cancelled() => Err(JobError::Interrupted { job: id }),
                Err(error) => Err(JobError::Task(error.to_string())),
            },
            error = stalled => {
                tracing::info!(job = %JobTag::of(id),
                    "the registration is saved once the store can be written again; the caller is told to retry");
                Err(JobError::Store(error))
            }
        }
    }

    /// Finishes a job in `registering`, detached from whoever asked: the
    /// agent must answer its health check, then the registrar must confirm
    /// the registration; the job is then `complete` (announced in Ensue now
    /// or in the background), or back at the wallet step with the reason.
    /// `stalled` hears the store's error if a transition has to wait for it.
    /// The caller has marked the job as worked on here (run `token`); it is
    /// unmarked at the end.
    fn spawn_registration(
        &self,
        job: Job,
        stalled: Option<tokio::sync::oneshot::Sender<StoreError>>,
        token: u64,
    ) -> JoinHandle<Result<Job, JobError>> {
        let machine = self.clone();
        let id = job.id;
        let task = tokio::spawn(async move {
            let registered = machine.finish_registration(job, stalled).await;
            machine.runner.end(id, token);
            registered
        });
        self.runner.attach(id, token, task.abort_handle());
        task
    }

    /// The work of [`Self::spawn_registration`].
    async fn finish_registration(
        &self,
        mut job: Job,
        mut stalled: Option<tokio::sync::oneshot::Sender<StoreError>>,
    ) -> Result<Job, JobError> {
        let confirmed = match self.check_health(&job).await {
            Ok(()) => self.confirm(&job).await,
            Err(error) => Err(error),
        };
        if let Err(error) = confirmed {
            self.commit_when_writable(&mut job, JobStatus::AwaitingNearSignature, &mut stalled)
                .await?;
            return Err(error);
        }
        // The registration stands whatever Ensue says: a new coordinator's
        // org refuses its key until a person claims it, which happens
        // after this answer. Announcing is retried in the background.
        if let Err(error) = self.announce(&job).await {
            tracing::info!(job = %JobTag::of(job.id), %error, "the agent is not announced in Ensue yet; retrying in the background");
            job.announce_pending = true;
        }
        self.commit_when_writable(&mut job, JobStatus::Complete, &mut stalled)
            .await?;
        if job.announce_pending {
            self.spawn_announcer(job.id);
        }
        Ok(job)
    }

    /// Refuses to register an agent that does not answer its health check
    /// (a dead agent must never become a complete job).
    async fn check_health(&self, job: &Job) -> Result<(), JobError> {
        let incomplete = |what| JobError::Incomplete { job: job.id, what };
        let did = job
            .agent_did
            .clone()
            .ok_or_else(|| incomplete("agent DID"))?;
        let endpoint = job.endpoint.clone().ok_or_else(|| incomplete("endpoint"))?;
        self.ports
            .health_gate
            .wait(
                &self.ports.http,
                &endpoint,
                &did,
                self.settings.registration_health_wait,
                &mut |_| {},
            )
            .await
            .map(|_| ())
            .map_err(|error| JobError::AgentUnhealthy {
                job: job.id,
                reason: error.to_string(),
            })
    }

    /// Retries announcing a complete job's agent until it lands (or the job
    /// is purged); what a restart resumes too.
    fn spawn_announcer(&self, id: Uuid) {
        let machine = self.clone();
        tokio::spawn(async move {
            let mut attempt = 0;
            loop {
                attempt += 1;
                tokio::time::sleep(machine.settings.announce_retry.delay(attempt)).await;
                let mut job = match machine.jobs.get(id).await {
                    Ok(Some(job)) if job.status == JobStatus::Complete && job.announce_pending => {
                        job
                    }
                    Ok(_) => return,
                    Err(error) => {
                        tracing::warn!(job = %JobTag::of(id), %error, "cannot read a job to announce");
                        continue;
                    }
                };
                match machine.announce(&job).await {
                    Ok(()) => {
                        job.announce_pending = false;
                        match machine.jobs.save(&job).await {
                            Ok(()) => {
                                tracing::info!(job = %JobTag::of(id), attempt, "agent announced in Ensue");
                                return;
                            }
                            Err(error) => {
                                tracing::warn!(job = %JobTag::of(id), %error, "cannot record an announcement")
                            }
                        }
                    }
                    Err(error) => {
                        tracing::debug!(job = %JobTag::of(id), attempt, %error, "the agent is still not announced")
                    }
                }
            }
        });
    }

    /// The registrar's word on the registration.
    async fn confirm(&self, job: &Job) -> Result<(), JobError> {
        let incomplete = |what| JobError::Incomplete { job: job.id, what };
        let did = job
            .agent_did
            .clone()
            .ok_or_else(|| incomplete("agent DID"))?;
        let endpoint = job.endpoint.clone().ok_or_else(|| incomplete("endpoint"))?;
        let cvm_id = job
            .cvm_id
            .clone()
            .ok_or_else(|| incomplete("deployment id"))?;
        let registrar = &self.ports.registrar;
        match job.role {
            AgentRole::Worker => {
                let coordinator = job
                    .coordinator_did
                    .as_ref()
                    .ok_or_else(|| incomplete("coordinator DID"))?;
                registrar
                    .complete_worker(&WorkerClaim {
                        owner: job.near_account.clone(),
                        registration: WorkerRegistration {
                            coordinator_did: coordinator.to_string(),
                            worker_did: did.to_string(),
                            endpoint_url: endpoint.clone(),
                            cvm_id,
                        },
                        tx_hash: job.tx_hash.clone(),
                    })
                    .await?;
            }
            AgentRole::Coordinator => {
                registrar
                    .complete_coordinator(&CoordinatorClaim {
                        owner: job.near_account.clone(),
                        registration: CoordinatorRegistration {
                            coordinator_did: did.to_string(),
                            endpoint_url: endpoint.clone(),
                            cvm_id,
                            min_workers: job.min_workers.unwrap_or(1),
                            max_workers: job.max_workers.unwrap_or(10),
                        },
                        contract: job.contract_address.clone(),
                        tx_hash: job.tx_hash.clone(),
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// The agent's name and endpoint written to Ensue, under the key its
    /// env holds, for the other agents of its org.
    async fn announce(&self, job: &Job) -> Result<(), JobError> {
        let incomplete = |what| JobError::Incomplete { job: job.id, what };
        let did = job
            .agent_did
            .clone()
            .ok_or_else(|| incomplete("agent DID"))?;
        let endpoint = job.endpoint.clone().ok_or_else(|| incomplete("endpoint"))?;
        let spec = self
            .spec_of(job)
            .await
            .map_err(|_| incomplete("deployment spec"))?;
        let memory = self.ports.ensue.memory(&spec.env.ensue_api_key)?;
        memory
            .upsert(
                &keys::agent(&did, AgentField::DisplayName),
                &job.display_name,
            )
            .await?;
        memory
            .upsert(&keys::agent(&did, AgentField::Endpoint), &endpoint)
            .await?;
        Ok(())
    }
}

/// Whether a job's step at `status` is work for this machine's CPU (a key,
/// a signature, the agent's spec) rather than a wait on an outside service.
fn runs_here(status: JobStatus) -> bool {
    matches!(
        status,
        JobStatus::GeneratingIdentity | JobStatus::CreatingSpace | JobStatus::PreparingPhala
    )
}

/// Logs a transition: at info where the job stops for a person or ends, or
/// leaves the wallet step; the runner's own steps in between at debug (a
/// failed job gets its one info line from the runner, with its error).
fn log_transition(job: Uuid, from: JobStatus, to: JobStatus) {
    if to.is_runner_owned() && from.is_runner_owned() {
        tracing::debug!(job = %JobTag::of(job), from = from.as_str(), to = to.as_str(), "job transition");
    } else {
        tracing::info!(job = %JobTag::of(job), from = from.as_str(), to = to.as_str(), "job transition");
    }
    crate::metrics::job_transition(from, to);
}

/// The org credentials a job chose before its org exists (see
/// [`EnsueAccess::choose_org_credentials`](crate::ports::EnsueAccess::choose_org_credentials)).
fn chosen_org_credentials(job: &Job) -> Option<OrgCredentials> {
    let secrets = &job.secrets;
    match (
        &secrets.ensue_api_key,
        &secrets.ensue_claim_url,
        &secrets.ensue_verification_code,
    ) {
        (Some(api_key), Some(claim_url), Some(verification_code)) => Some(OrgCredentials {
            api_key: zeroize::Zeroizing::new(api_key.clone()),
            claim_url: claim_url.clone(),
            verification_code: verification_code.clone(),
        }),
        _ => None,
    }
}

fn keep_org_credentials(job: &mut Job, org: OrgCredentials) {
    job.secrets.ensue_api_key = Some(org.api_key.to_string());
    job.secrets.ensue_claim_url = Some(org.claim_url);
    job.secrets.ensue_verification_code = Some(org.verification_code);
}

fn agent_did(job: &Job) -> Result<Did, String> {
    job.agent_did
        .clone()
        .ok_or_else(|| "the agent's DID is missing".to_owned())
}

/// `delibera-<slug of the display name>-<4 characters of the DID>`, within
/// Ensue's 1–64 `[A-Za-z0-9_-]` rule.
pub fn ensue_org_name(display_name: &str, did: &Did) -> String {
    let mut slug = String::new();
    for c in display_name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_end_matches('-').chars().take(40).collect();
    let suffix: String = did
        .as_str()
        .chars()
        .rev()
        .take(4)
        .collect::<String>()
        .to_ascii_lowercase();
    if slug.is_empty() {
        format!("delibera-{suffix}")
    } else {
        format!("delibera-{}-{suffix}", slug.trim_end_matches('-'))
    }
}

/// How the `error` of an expired job begins.
const EXPIRED: &str = "expired: ";

/// The error text of a failed deploy step, marking the job for a teardown
/// when the deploy may have left a deployment running: always when
/// `may_have_deployed` (an earlier try went unseen), else when the deployer
/// says so ([`delibera_deploy::Error::LeftBehind`]). The sweeper then tears
/// it down, by id when known, else by the job's deployment name.
fn mark_left_behind(
    job: &mut Job,
    what: &str,
    error: delibera_deploy::Error,
    may_have_deployed: bool,
) -> String {
    let (error, id) = match error {
        delibera_deploy::Error::LeftBehind { id, source, .. } => (*source, id),
        error if may_have_deployed => (error, None),
        error => return format!("{what}: {error}"),
    };
    job.cvm_id = id;
    job.deployment_teardown_pending = true;
    format!("{what}: {error}; anything it may have left running is being torn down")
}

/// The `error` of an expired job, before and after its teardown.
fn expiry_message(expiry: Duration, torn_down: bool) -> String {
    let deployment = if torn_down {
        "its deployment was torn down"
    } else {
        "its deployment is being torn down"
    };
    format!(
        "{EXPIRED}the agent was not registered within {} of becoming ready (awaiting_near_signature), \
         so {deployment}; provision again to start over",
        crate::config::format_duration(expiry)
    )
}

fn format_wait(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_names_follow_ensue_rules() {
        let did: Did = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH"
            .parse()
            .unwrap();
        let name = ensue_org_name("My DAO Coordinator!", &did);
        assert_eq!(name, "delibera-my-dao-coordinator-hyib");
        let long = ensue_org_name(&"x".repeat(200), &did);
        assert!(long.len() <= 64);
        assert!(ensue_org_name("日本", &did).starts_with("delibera-"));
        for name in [name, long] {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            );
        }
    }

    #[test]
    fn waits_read_as_minutes_and_seconds() {
        assert_eq!(format_wait(Duration::from_secs(130)), "2m10s");
    }
}
