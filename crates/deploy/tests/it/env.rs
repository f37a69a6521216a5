//! The env contract: what the server writes is what the agent reads.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use delibera_deploy::{
    AgentDocuments, AgentEnv, AgentIdentity, AgentRole, EnvVar, Error, StorachaGrant, Voter,
    WorkerBounds, vars,
};
use delibera_identity::{AccountId, Did, Keypair};
use delibera_serve::CorsPolicy;
use proptest::prelude::*;
use zeroize::Zeroizing;

fn did(seed: u8) -> Did {
    Keypair::from_seed(&[seed; 32]).did()
}

fn identity() -> AgentIdentity {
    AgentIdentity::from_keypair(&Keypair::from_seed(&[1; 32]))
}

/// An env with every field set to something other than its default.
fn full_env(role: AgentRole, voter: Voter) -> AgentEnv {
    let mut env = AgentEnv::new(role, identity(), "Worker Alpha", "lmn_secret_key");
    env.owner = Some(AccountId::parse("alice.testnet").unwrap());
    if role == AgentRole::Worker {
        env.coordinator_did = Some(did(2));
    }
    env.storacha = Some(StorachaGrant {
        delegation: "mAYIEAQ0ExampleProof".into(),
        space_did: did(3),
    });
    env.ensue_url = "https://ensue.example/mcp".parse().unwrap();
    env.near_rpc_urls = vec![
        "https://rpc.testnet.near.org/".parse().unwrap(),
        "https://rpc.backup.example/key/abc".parse().unwrap(),
    ];
    env.registry_contract = Some(AccountId::parse("registry.agents-coordinator.testnet").unwrap());
    env.coordinator_contract =
        Some(AccountId::parse("mydao.coord-factory.agents-coordinator.testnet").unwrap());
    env.public_url = Some(
        "https://a1b2c3-3001.dstack-pha-prod5.phala.network/"
            .parse()
            .unwrap(),
    );
    env.port = 8080;
    env.worker_bounds = Some(WorkerBounds { min: 2, max: 7 });
    env.poll_interval = Duration::from_millis(1500);
    env.round_deadline = Duration::from_secs(45);
    env.voter = voter;
    env.static_workers = vec![did(4), did(5)];
    env.documents = AgentDocuments::Reference;
    env.cors = CorsPolicy::Origins(vec![
        "https://app.example.com".into(),
        "http://localhost:3000".into(),
    ]);
    env
}

fn llm() -> Voter {
    Voter::Llm {
        base_url: "http://127.0.0.1:11434/v1".parse().unwrap(),
        model: "llama3".into(),
        api_key: Some(Zeroizing::new("sk-secret".into())),
    }
}

fn lookup_in(vars: &[EnvVar]) -> impl Fn(&str) -> Option<String> + '_ {
    |name| {
        vars.iter()
            .find(|var| var.key == name)
            .map(|var| var.value.to_string())
    }
}

#[test]
fn every_field_round_trips_for_both_roles_and_voters() {
    for role in AgentRole::ALL {
        for voter in [Voter::Rules, llm()] {
            let env = full_env(role, voter);
            let vars = env.to_vars();
            let read = AgentEnv::from_lookup(lookup_in(&vars)).unwrap();
            assert_eq!(read, env, "{role}");
            assert_eq!(AgentEnv::try_from(vars.as_slice()).unwrap(), env);
        }
    }
}

#[test]
fn every_cors_policy_round_trips_and_the_default_is_not_written() {
    for cors in [CorsPolicy::SameOriginOnly, CorsPolicy::AnyOrigin] {
        let mut env = full_env(AgentRole::Coordinator, Voter::Rules);
        env.cors = cors.clone();
        let vars = env.to_vars();
        assert_eq!(AgentEnv::try_from(vars.as_slice()).unwrap().cors, cors);
        assert_eq!(
            vars.iter().any(|var| var.key == vars::CORS_ORIGINS),
            cors != CorsPolicy::AnyOrigin
        );
    }
}

#[test]
fn the_agent_reads_every_name_the_server_can_write_and_nothing_else() {
    let declared: BTreeSet<&str> = vars::ALL.into_iter().collect();
    assert_eq!(declared.len(), vars::ALL.len(), "a name is listed twice");

    // Everything a full env writes is a declared name, and declared names not
    // written by it are only the other voter's.
    let mut written = BTreeSet::new();
    for role in AgentRole::ALL {
        for voter in [Voter::Rules, llm()] {
            for var in full_env(role, voter).to_vars() {
                assert!(
                    declared.contains(var.key.as_str()),
                    "{} is written but not declared",
                    var.key
                );
                written.insert(var.key);
            }
        }
    }
    let never_written: Vec<&str> = declared
        .iter()
        .filter(|name| !written.contains(**name))
        .copied()
        .collect();
    assert!(
        never_written.is_empty(),
        "declared but never written: {never_written:?}"
    );

    // The reader asks for exactly the declared names.
    let asked = RefCell::new(BTreeSet::new());
    let vars = full_env(AgentRole::Worker, llm()).to_vars();
    let lookup = lookup_in(&vars);
    AgentEnv::from_lookup(|name| {
        asked.borrow_mut().insert(name.to_owned());
        lookup(name)
    })
    .unwrap();
    let asked: BTreeSet<String> = asked.into_inner();
    let declared: BTreeSet<String> = declared.into_iter().map(str::to_owned).collect();
    assert_eq!(asked, declared);
}

#[test]
fn a_minimal_env_needs_only_the_required_names() {
    let keypair = Keypair::from_seed(&[9; 32]);
    let mut env = HashMap::from([
        (vars::AGENT_ROLE, "worker".to_owned()),
        (vars::PRIVATE_KEY, keypair.to_ucanto_string().to_string()),
        (vars::ENSUE_API_KEY, "lmn_k".to_owned()),
    ]);
    let read = AgentEnv::from_lookup(|name| env.get(name).cloned()).unwrap();
    assert_eq!(read.did(), &keypair.did());
    assert_eq!(read.port, 3001);
    assert_eq!(read.voter, Voter::Rules);
    assert!(read.public_url.is_none() && !read.local);
    assert_eq!(read.documents, AgentDocuments::Delibera);
    // The dashboards are served from another origin than the agent's.
    assert_eq!(read.cors, CorsPolicy::AnyOrigin);
    for name in vars::REQUIRED {
        let removed = env.remove(name).unwrap();
        match AgentEnv::from_lookup(|name| env.get(name).cloned()) {
            Err(Error::MissingVar { name: missing }) => assert_eq!(missing, name),
            other => panic!("without {name}: {other:?}"),
        }
        env.insert(name, removed);
    }
}

fn read_with(changes: &[(&'static str, &str)]) -> Result<AgentEnv, Error> {
    let mut vars = full_env(AgentRole::Worker, Voter::Rules).to_vars();
    for (name, value) in changes {
        vars.retain(|var| var.key != *name);
        vars.push(EnvVar::new(*name, *value));
    }
    AgentEnv::from_lookup(lookup_in(&vars))
}

#[test]
fn bad_values_name_the_variable_and_never_echo_a_secret() {
    for (name, value) in [
        (vars::AGENT_ROLE, "observer"),
        (vars::PRIVATE_KEY, "MgCYnot-a-key-super-secret"),
        (
            vars::AGENT_DID,
            "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
        ),
        (vars::NEAR_ACCOUNT, "Alice.testnet"),
        (vars::ENSUE_URL, "ftp://ensue.example"),
        (vars::NEAR_RPC_URL, "https://ok.example,not a url"),
        (vars::PUBLIC_URL, "http://127.0.0.1:3001"),
        (vars::MODE, "staging"),
        (vars::PORT, "70000"),
        (vars::MIN_WORKERS, "9"),
        (vars::POLL_INTERVAL_MS, "0"),
        (vars::TASK_HANDLER, "coin"),
        (vars::STATIC_WORKERS, "did:web:example.com"),
        (vars::DOCUMENTS, "typescript"),
        (vars::CORS_ORIGINS, "https://app.example.com/"),
        (vars::CORS_ORIGINS, "*,https://app.example.com"),
    ] {
        let error = read_with(&[(name, value)]).unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with(name), "{name}: {text}");
        assert!(!text.contains("super-secret"), "{text}");
    }
    let error = read_with(&[(vars::TASK_HANDLER, "llm")]).unwrap_err();
    assert!(matches!(error, Error::MissingVar { name } if name == vars::LLM_MODEL));
    let without_space = {
        let mut vars = full_env(AgentRole::Worker, Voter::Rules).to_vars();
        vars.retain(|var| var.key != vars::SPACE_DID);
        AgentEnv::from_lookup(lookup_in(&vars)).unwrap_err()
    };
    assert!(matches!(without_space, Error::MissingVar { name } if name == vars::SPACE_DID));
}

#[test]
fn the_document_family_is_read_and_the_default_is_not_written() {
    let read = read_with(&[(vars::DOCUMENTS, "delibera")]).unwrap();
    assert_eq!(read.documents, AgentDocuments::Delibera);
    assert!(read.to_vars().iter().all(|var| var.key != vars::DOCUMENTS));
    let read = read_with(&[(vars::DOCUMENTS, " reference ")]).unwrap();
    assert_eq!(read.documents, AgentDocuments::Reference);
    assert!(
        read.to_vars()
            .iter()
            .any(|var| var.key == vars::DOCUMENTS && var.value.to_string() == "reference")
    );
}

#[test]
fn a_loopback_public_url_needs_local_mode() {
    let local = read_with(&[
        (vars::PUBLIC_URL, "http://127.0.0.1:3001"),
        (vars::MODE, "local"),
    ])
    .unwrap();
    assert!(local.local);
    assert!(read_with(&[(vars::PUBLIC_URL, "http://localhost:3001")]).is_err());
    assert!(read_with(&[(vars::PUBLIC_URL, "http://[::1]:3001")]).is_err());
    assert!(read_with(&[(vars::PUBLIC_URL, "https://agent.example")]).is_ok());
}

#[test]
fn a_coordinator_is_its_own_coordinator() {
    let env = full_env(AgentRole::Coordinator, Voter::Rules);
    assert_eq!(env.coordinator(), Some(env.did()));
    let mut vars = env.to_vars();
    vars.push(EnvVar::new(vars::COORDINATOR_DID, did(8).as_str()));
    assert!(AgentEnv::from_lookup(lookup_in(&vars)).is_err());
    let worker = full_env(AgentRole::Worker, Voter::Rules);
    assert_eq!(worker.coordinator(), Some(&did(2)));
}

#[test]
fn debug_shows_no_secret() {
    let env = full_env(AgentRole::Worker, llm());
    let text = format!("{env:?}");
    let key = env.identity.private_key().to_owned();
    for secret in [key.as_str(), "lmn_secret_key", "sk-secret"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(text.contains("Worker Alpha"));
}

proptest! {
    #[test]
    fn free_text_round_trips(name in "[^\u{0}]{1,40}", model in "[a-z0-9./:-]{1,20}", port in 1u16.., poll in 1u64..3_600_000) {
        let mut env = full_env(AgentRole::Worker, llm());
        env.display_name = name.trim().to_owned();
        prop_assume!(!env.display_name.is_empty());
        env.port = port;
        env.poll_interval = Duration::from_millis(poll);
        if let Voter::Llm { model: m, .. } = &mut env.voter {
            *m = model;
        }
        let vars = env.to_vars();
        prop_assert_eq!(AgentEnv::from_lookup(lookup_in(&vars)).unwrap(), env);
    }
}
