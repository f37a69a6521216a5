//! `delibera delegation …`: UCAN delegations that Storacha and ucanto accept.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use delibera_identity::Keypair;
use delibera_storacha::{Capability, Delegation, Principal};
use serde_json::{Value as Json, json};

use crate::{Outcome, arg_or_stdin, print_json};

#[derive(Subcommand)]
pub(crate) enum DelegationCommand {
    /// Issue a delegation; prints its proof text (`mAYIEA…` by default).
    Create {
        /// The issuer's ucanto private key (`Mg…`), or `-` for stdin.
        #[arg(long)]
        issuer_key: String,
        /// The audience's DID (any DID method).
        #[arg(long)]
        audience: String,
        /// An ability to delegate, e.g. `upload/add` or `space/*` (repeatable).
        #[arg(long, required = true, num_args = 1..)]
        can: Vec<String>,
        /// The resource. Default: the issuer's DID without proofs; with proofs, the
        /// one resource their capabilities share.
        #[arg(long)]
        with: Option<String>,
        /// Expiry: unix seconds, or `never` (also `0`, as in the Storacha CLI).
        #[arg(long, default_value = "never")]
        expiration: String,
        /// Not valid before this unix time.
        #[arg(long)]
        not_before: Option<u64>,
        /// A nonce, to make otherwise identical delegations distinct.
        #[arg(long)]
        nonce: Option<String>,
        /// A proof (either text form) to cite and embed (repeatable).
        #[arg(long)]
        proof: Vec<String>,
        /// Output form: `cid` (`mAYIEA…`, what @storacha/client/proof parses) or
        /// `base64` (the padded base64 archive).
        #[arg(long, value_enum, default_value_t = Format::Cid)]
        format: Format,
    },
    /// Decode and verify a delegation; prints JSON and exits 1 when a check fails.
    Inspect {
        /// The proof text (either form), or `-` for stdin.
        #[arg(default_value = "-")]
        proof: String,
        /// Verify as of this unix time instead of now.
        #[arg(long)]
        now: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// The identity-CID form, `mAYIEA…`.
    Cid,
    /// Padded standard base64 of the archive.
    Base64,
}

pub(crate) fn run(command: DelegationCommand) -> anyhow::Result<Outcome> {
    match command {
        DelegationCommand::Create {
            issuer_key,
            audience,
            can,
            with,
            expiration,
            not_before,
            nonce,
            proof,
            format,
        } => {
            let issuer = Keypair::from_ucanto_str(&arg_or_stdin(&issuer_key)?)
                .context("invalid issuer key")?;
            let audience = Principal::parse(audience.trim()).context("invalid audience")?;
            let proofs = proof
                .iter()
                .map(|text| Delegation::parse(text))
                .collect::<Result<Vec<_>, _>>()
                .context("invalid proof")?;
            let with = match with {
                Some(with) => with,
                None => default_resource(&issuer, &proofs)?,
            };
            let capabilities = can
                .iter()
                .map(|can| Capability::new(can.as_str(), with.as_str()))
                .collect::<Result<Vec<_>, _>>()
                .context("invalid capability")?;
            let mut builder = Delegation::builder(audience, capabilities)
                .expiration(parse_expiration(&expiration)?);
            if let Some(not_before) = not_before {
                builder = builder.not_before(not_before);
            }
            if let Some(nonce) = nonce {
                builder = builder.nonce(nonce);
            }
            for proof in proofs {
                builder = builder.proof(proof);
            }
            let delegation = builder
                .sign(&issuer)
                .context("cannot sign the delegation")?;
            match format {
                Format::Cid => println!("{}", delegation.to_identity_cid()),
                Format::Base64 => println!("{}", delegation.to_base64()),
            }
            Ok(Outcome::Success)
        }
        DelegationCommand::Inspect { proof, now } => {
            let delegation =
                Delegation::parse(&arg_or_stdin(&proof)?).context("cannot read the delegation")?;
            let now = now.unwrap_or_else(unix_now);
            let errors: Vec<String> = delegation
                .verification_errors(now)
                .iter()
                .map(ToString::to_string)
                .collect();
            let ok = errors.is_empty();
            let mut report = describe(&delegation);
            if let Json::Object(map) = &mut report {
                map.insert("ok".to_owned(), json!(ok));
                map.insert("errors".to_owned(), json!(errors));
            }
            print_json(&report);
            Ok(if ok {
                Outcome::Success
            } else {
                Outcome::Exit(1)
            })
        }
    }
}

/// The issuer's own DID, or the single resource the proofs' capabilities name.
fn default_resource(issuer: &Keypair, proofs: &[Delegation]) -> anyhow::Result<String> {
    if proofs.is_empty() {
        return Ok(issuer.did().to_string());
    }
    let resources: BTreeSet<&str> = proofs
        .iter()
        .flat_map(|proof| proof.capabilities().iter().map(Capability::with))
        .filter(|with| *with != "ucan:*")
        .collect();
    match resources.into_iter().collect::<Vec<_>>().as_slice() {
        [only] => Ok((*only).to_owned()),
        _ => bail!("the proofs name several resources (or none): pass --with"),
    }
}

fn parse_expiration(text: &str) -> anyhow::Result<Option<u64>> {
    match text.trim() {
        "never" | "0" => Ok(None),
        seconds => seconds.parse().map(Some).with_context(|| {
            format!("--expiration must be unix seconds or `never`, got {seconds:?}")
        }),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// `{cid, issuer, audience, capabilities, expiration, notBefore, proofs}`, recursively.
fn describe(delegation: &Delegation) -> Json {
    let capabilities: Vec<Json> = delegation
        .capabilities()
        .iter()
        .map(|capability| {
            let mut entry = json!({ "can": capability.can(), "with": capability.with() });
            if let (Some(nb), Json::Object(map)) = (capability.nb(), &mut entry) {
                let nb = delibera_storacha::Value::Map(nb.clone()).to_dag_json();
                // DAG-JSON is JSON, so this cannot fail; fall back to the text if it ever did.
                map.insert(
                    "nb".to_owned(),
                    serde_json::from_str(&nb).unwrap_or(Json::String(nb)),
                );
            }
            entry
        })
        .collect();
    let proofs: Vec<Json> = delegation
        .proof_links()
        .iter()
        .map(|link| {
            match delegation.proofs().iter().find(|proof| proof.cid() == link) {
                Some(proof) => describe(proof),
                // Cited but not in the archive: only the CID is known.
                None => json!({ "cid": link.to_string() }),
            }
        })
        .collect();
    json!({
        "cid": delegation.cid().to_string(),
        "issuer": delegation.issuer().as_str(),
        "audience": delegation.audience().as_str(),
        "capabilities": capabilities,
        "expiration": delegation.expiration(),
        "notBefore": delegation.not_before(),
        "proofs": proofs,
    })
}
