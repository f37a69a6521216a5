#![doc = include_str!("../README.md")]

mod client;
mod compose;
mod deployer;
mod env;
mod error;
mod health;

pub use client::{
    API_VERSION_2025_10_28, API_VERSION_2026_01_21, CommitRequest, ComposeFile, Cvm, CvmUrl,
    DEFAULT_API_VERSION, DEFAULT_BASE_URL, DEFAULT_INSTANCE_TYPE, DEFAULT_RETRY, DEFAULT_TIMEOUT,
    PhalaClient, ProvisionRequest, Provisioned,
};
pub use compose::{
    AgentRole, CvmName, DEFAULT_COORDINATOR_IMAGE, DEFAULT_WORKER_IMAGE, DSTACK_SOCKET, ImageRef,
    render_compose,
};
pub use deployer::{
    AgentSpec, DEFAULT_DASHBOARD_BASE, Deployer, Deployment, DeploymentStatus, PhalaDeployer,
    PhalaDeployerOptions, StartPolicy, deploy_until_healthy,
};
pub use env::{
    EnvVar, decrypt_env, encrypt_env, encrypt_env_with, encryption_pubkey_hex, env_keys,
    env_plaintext, validate_env_key, validate_env_list,
};
pub use error::{ApiError, Error, FieldError, Result};
pub use health::{HealthGate, HealthProgress, HealthReport, OnHealthProgress, wait_healthy};

// A dependency that appears in public signatures.
pub use delibera_backoff;
