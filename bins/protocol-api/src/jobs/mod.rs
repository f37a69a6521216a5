//! Provisioning jobs: the model, durable storage and the background runner.

pub mod model;
pub mod runner;
pub mod store;

pub use model::{Job, JobSecrets, JobStatus, NewJob, Role};
pub use runner::Runner;
pub use store::{JobStore, StoreError};
