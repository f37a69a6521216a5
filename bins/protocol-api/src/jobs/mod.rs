//! Provisioning jobs: the model, and the machine that owns every transition.

mod error;
mod machine;
mod model;

pub use error::JobError;
pub use machine::{JobMachine, Registration, ensue_org_name};
pub use model::{Job, JobSecrets, JobStatus, NewJob};
