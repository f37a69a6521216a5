#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod client;
mod compose;
mod deployer;
mod env;
mod error;

pub use client::{
    API_VERSION_2025_10_28, API_VERSION_2026_01_21, CommitRequest, ComposeFile, Cvm, CvmPage,
    CvmUrl, DEFAULT_API_VERSION, DEFAULT_BASE_URL, DEFAULT_INSTANCE_TYPE, DEFAULT_RETRY,
    DEFAULT_TIMEOUT, PhalaClient, ProvisionRequest, Provisioned,
};
pub use compose::{DSTACK_SOCKET, render_compose};
pub use deployer::{
    COMMIT_SETTLE_LOOKUPS, DEFAULT_DASHBOARD_BASE, DEFAULT_PUBLIC_URL_TEMPLATE, PhalaDeployer,
    PhalaDeployerOptions, StartPolicy,
};
pub use env::{decrypt_env, encrypt_env, encrypt_env_with, encryption_pubkey_hex, env_plaintext};
pub use error::{ApiError, Error, FieldError, Result};

// The deploy contract this crate implements, and types of its public signatures.
pub use delibera_backoff;
pub use delibera_deploy::{self as deploy, EnvVar};
