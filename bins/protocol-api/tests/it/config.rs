//! What the configuration parses to. Each test runs in a child process with
//! an empty environment (plus what it sets), since every setting is also read
//! from the environment: a developer's exported `DELIBERA_MODE` or
//! `PHALA_API_KEY` must not change the outcome.

use std::time::Duration;

use clap::Parser;
use protocol_api::config::{Config, Mode, format_duration, parse_duration};

use crate::common::in_clean_env;

#[test]
fn defaults_are_local_mode_on_3005() {
    if !in_clean_env(&[]) {
        return;
    }
    let config = Config::try_parse_from(["protocol-api"]).unwrap();
    assert_eq!(config.port, 3005);
    assert_eq!(config.mode, Mode::Local);
    assert_eq!(config.ensue_local_addr.to_string(), "127.0.0.1:3006");
    assert_eq!(config.missing_production_settings().len(), 9);
    assert_eq!(config.api_edges(), delibera_serve::Edges::default());
}

#[test]
fn edge_settings_reach_the_edges() {
    if !in_clean_env(&[]) {
        return;
    }
    let config = Config::try_parse_from([
        "protocol-api",
        "--header-read-timeout-secs",
        "3",
        "--idle-timeout-secs",
        "4",
        "--body-read-timeout-secs",
        "5",
        "--max-connections",
        "100",
        "--fd-reserve",
        "50",
    ])
    .unwrap();
    let edges = config.api_edges();
    assert_eq!(edges.header_read_timeout, Duration::from_secs(3));
    assert_eq!(edges.idle_timeout, Duration::from_secs(4));
    assert_eq!(edges.body_read_timeout, Duration::from_secs(5));
    assert_eq!(edges.max_connections, Some(100));
    assert_eq!(edges.fd_reserve, 50);
    // The cap is the API's; the embedded servers share only the limits.
    assert_eq!(config.edges().max_connections, None);
    let zero = Config::try_parse_from(["protocol-api", "--idle-timeout-secs", "0"])
        .err()
        .expect("a zero idle timeout is refused");
    assert_eq!(
        zero.kind(),
        clap::error::ErrorKind::ValueValidation,
        "{zero}"
    );
    // A deadline past the clock's range would panic in every connection.
    for flag in [
        "--header-read-timeout-secs",
        "--idle-timeout-secs",
        "--body-read-timeout-secs",
    ] {
        let day = Config::try_parse_from(["protocol-api", flag, "86400"]).unwrap();
        assert!(day.edges().validate().is_ok(), "{flag}");
        for huge in ["86401", &u64::MAX.to_string()] {
            let refused = Config::try_parse_from(["protocol-api", flag, huge])
                .err()
                .unwrap_or_else(|| panic!("{flag} {huge} is refused"));
            assert_eq!(
                refused.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{refused}"
            );
        }
    }
}

#[test]
fn durations_read_and_print_in_whole_units() {
    if !in_clean_env(&[]) {
        return;
    }
    for (text, seconds) in [
        ("24h", 86_400),
        ("90m", 5400),
        ("30s", 30),
        ("2d", 172_800),
        ("45", 45),
    ] {
        assert_eq!(
            parse_duration(text),
            Ok(Duration::from_secs(seconds)),
            "{text}"
        );
    }
    for bad in [
        "",
        "h",
        "0",
        "0h",
        "5w",
        "-1s",
        "1.5h",
        "99999999999999999999d",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
    assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
    let config = Config::try_parse_from(["protocol-api", "--job-expiry", "90m"]).unwrap();
    assert_eq!(config.job_expiry, Duration::from_secs(5400));
}

#[test]
fn an_empty_admin_token_is_refused_with_what_to_do() {
    if !in_clean_env(&[]) {
        return;
    }
    for blank in ["", "  "] {
        let refused = Config::try_parse_from(["protocol-api", "--admin-token", blank])
            .err()
            .expect("a blank admin token is refused");
        let message = refused.to_string();
        assert!(message.contains("the admin token is empty"), "{message}");
        assert!(message.contains("PROTOCOL_API_ADMIN_TOKEN"), "{message}");
    }
    let config = Config::try_parse_from(["protocol-api", "--admin-token", "s3cret"]).unwrap();
    assert_eq!(config.admin_token.as_deref(), Some("s3cret"));
}

#[test]
fn production_names_every_missing_variable() {
    if !in_clean_env(&[]) {
        return;
    }
    let config = Config::try_parse_from([
        "protocol-api",
        "--mode",
        "production",
        "--phala-api-key",
        "phak_x",
        "--near-rpc-url",
        "https://rpc.testnet.near.org",
    ])
    .unwrap();
    assert_eq!(
        config.missing_production_settings(),
        [
            "ENSUE_API_KEY",
            "NEAR_ACCOUNT_ID",
            "NEAR_PRIVATE_KEY",
            "REGISTRY_CONTRACT_ID",
            "COORDINATOR_CONTRACT_ID",
            "STORACHA_AGENT_PRIVATE_KEY",
            "STORACHA_DELEGATION_PROOF"
        ]
    );
}

#[test]
fn settings_are_read_from_the_environment() {
    if !in_clean_env(&[
        ("DELIBERA_MODE", "production"),
        ("PHALA_API_KEY", "phak_x"),
        ("PORT", "4005"),
        ("NEAR_RPC_URL", "https://a.example,https://b.example"),
    ]) {
        return;
    }
    let config = Config::try_parse_from(["protocol-api"]).unwrap();
    assert_eq!((config.mode, config.port), (Mode::Production, 4005));
    assert_eq!(config.phala_api_key.as_deref(), Some("phak_x"));
    assert_eq!(
        config
            .near_rpc_url
            .iter()
            .map(|url| url.as_str())
            .collect::<Vec<_>>(),
        ["https://a.example/", "https://b.example/"]
    );
    assert!(
        !config
            .missing_production_settings()
            .contains(&"PHALA_API_KEY")
    );
}

/// Production deploys images pinned by digest only: an unpinned or missing
/// image stops the start, naming its variable; pinned ones pass through.
#[test]
fn production_refuses_an_agent_image_not_pinned_by_digest() {
    use protocol_api::config::{ConfigError, ProductionConfig};

    if !in_clean_env(&[]) {
        return;
    }
    const PINNED: &str = "ghcr.io/delibera/delibera-agent@sha256:3333333333333333333333333333333333333333333333333333333333333333";
    let near_key = delibera_identity::Keypair::from_seed(&[5; 32])
        .to_near_secret_string()
        .to_string();
    let production = |images: &[(&str, &str)]| {
        let mut args = vec![
            "protocol-api".to_owned(),
            "--mode".into(),
            "production".into(),
        ];
        for (flag, value) in [
            ("--phala-api-key", "phak_x"),
            ("--ensue-api-key", "lmn_x"),
            ("--near-rpc-url", "https://rpc.testnet.near.org"),
            ("--near-account-id", "server.testnet"),
            ("--near-private-key", near_key.as_str()),
            ("--registry-contract-id", "registry.testnet"),
            ("--coordinator-contract-id", "coordinator.testnet"),
            ("--storacha-agent-private-key", "MgCY"),
            ("--storacha-delegation-proof", "mAYIEA"),
        ]
        .into_iter()
        .chain(images.iter().copied())
        {
            args.extend([flag.to_owned(), value.to_owned()]);
        }
        ProductionConfig::from_config(&Config::try_parse_from(args).unwrap())
    };

    let refused = |images: &[(&str, &str)], variable: &str| match production(images) {
        Err(ConfigError::Invalid { name, reason }) => {
            assert_eq!(name, variable, "{reason}");
            assert!(reason.contains("pinned by digest"), "{reason}");
        }
        Err(other) => panic!("{variable}: {other}"),
        Ok(_) => panic!("{variable}: production started"),
    };
    refused(&[("--coordinator-image", PINNED)], "WORKER_IMAGE");
    refused(
        &[
            ("--worker-image", "ghcr.io/delibera/delibera-worker:latest"),
            ("--coordinator-image", PINNED),
        ],
        "WORKER_IMAGE",
    );
    refused(
        &[
            ("--worker-image", PINNED),
            (
                "--coordinator-image",
                "ghcr.io/delibera/delibera-coordinator:v1",
            ),
        ],
        "COORDINATOR_IMAGE",
    );
    let pinned = production(&[("--worker-image", PINNED), ("--coordinator-image", PINNED)])
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(pinned.worker_image.to_string(), PINNED);
    assert_eq!(pinned.coordinator_image.to_string(), PINNED);
}

/// `DATABASE_URL` moves the jobs to PostgreSQL for several replicas: it is
/// refused in local mode (whose other state lives in the data dir and the
/// process) and without `PROTOCOL_API_SECRET_KEY` (each replica would seal
/// with a key of its own), naming the variable, before anything is opened;
/// a URL that does not parse is refused without repeating it.
#[test]
fn a_database_url_needs_production_mode_and_the_server_key() {
    use protocol_api::store::PostgresConfig;

    if !in_clean_env(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Port 1 on loopback: nothing listens, and nothing may be contacted.
    let url = "postgres://protocol:hunter2@127.0.0.1:1/jobs";
    let near_key = delibera_identity::Keypair::from_seed(&[5; 32])
        .to_near_secret_string()
        .to_string();
    const PINNED: &str = "ghcr.io/delibera/delibera-agent@sha256:3333333333333333333333333333333333333333333333333333333333333333";
    let refusal = |mode: &str| {
        let mut args: Vec<String> = [
            "protocol-api",
            "--mode",
            mode,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--database-url",
            url,
        ]
        .map(str::to_owned)
        .to_vec();
        if mode == "production" {
            for (flag, value) in [
                ("--phala-api-key", "phak_x"),
                ("--ensue-api-key", "lmn_x"),
                ("--near-rpc-url", "https://rpc.testnet.near.org"),
                ("--near-account-id", "server.testnet"),
                ("--near-private-key", near_key.as_str()),
                ("--registry-contract-id", "registry.testnet"),
                ("--coordinator-contract-id", "coordinator.testnet"),
                ("--storacha-agent-private-key", "MgCY"),
                ("--storacha-delegation-proof", "mAYIEA"),
                ("--worker-image", PINNED),
                ("--coordinator-image", PINNED),
            ] {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        let config = Config::try_parse_from(args).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        match runtime.block_on(protocol_api::compose::compose(&config)) {
            Ok(_) => panic!("{mode} mode started"),
            Err(error) => format!("{error:#}"),
        }
    };

    let production = refusal("production");
    assert!(
        production.contains("PROTOCOL_API_SECRET_KEY") && production.contains("DATABASE_URL"),
        "{production}"
    );
    let local = refusal("local");
    assert!(
        local.contains("DATABASE_URL is for production mode"),
        "{local}"
    );
    for refused in [&production, &local] {
        assert!(!refused.contains("hunter2"), "{refused}");
    }
    assert!(
        !data_dir.exists(),
        "nothing may be created before the refusal"
    );

    let unparsed = match PostgresConfig::parse("postgres://protocol:hunter2@db:port/jobs") {
        Ok(_) => panic!("a port that is no number parsed"),
        Err(error) => error,
    };
    assert!(unparsed.contains("DATABASE_URL"), "{unparsed}");
    assert!(!unparsed.contains("hunter2"), "{unparsed}");
    // An unescaped '@' in the password: the rest of it would be "the host".
    let Err(split) = PostgresConfig::parse("postgres://protocol:hunt@er2@db:5432/jobs") else {
        panic!("a password split at its '@' was taken for a host");
    };
    assert!(split.contains("%40"), "{split}");
    assert!(!split.contains("er2"), "{split}");
    assert_eq!(
        PostgresConfig::parse(url).unwrap().shown(),
        "postgres://127.0.0.1:1/jobs"
    );
}
