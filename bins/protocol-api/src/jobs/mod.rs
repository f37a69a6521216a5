//! Provisioning jobs: the model, and the machine that owns every transition.

mod background;
mod error;
mod machine;
mod model;

pub use error::JobError;
pub use machine::{JobMachine, Registration, StartedJob, ensue_org_name};
pub use model::{IdempotencyKey, Job, JobSecrets, JobStatus, JobTag, NewJob};
