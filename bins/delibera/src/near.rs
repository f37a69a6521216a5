//! `delibera near …`: offline transaction signing, signed calls as a wallet
//! makes them, and contract view calls.

use anyhow::Context;
use clap::{Args, Subcommand};
use delibera_near::{
    AccountId, Action, BlockReference, CryptoHash, FunctionCall, NearRpc, NearSigner,
    TransactionSender,
};
use serde_json::json;

use crate::{Outcome, arg_or_stdin, print_json};

#[derive(Subcommand)]
pub(crate) enum NearCommand {
    /// Sign one function call offline; prints `{"signedTransactionBase64", "hash"}`.
    SignFunctionCall(SignFunctionCall),
    /// Sign and send one function call, as a wallet does; prints
    /// `{"txHash", "result"}` once it executed (a contract panic is an error).
    Call(Call),
    /// Call a contract view method; prints its JSON result.
    View {
        /// RPC URL; repeat it for failover (tried in order).
        #[arg(long = "rpc", required = true)]
        rpc: Vec<String>,
        /// The contract account.
        contract: String,
        /// The view method.
        method: String,
        /// The arguments as JSON (default `{}`).
        args: Option<String>,
    },
}

#[derive(Args)]
pub(crate) struct SignFunctionCall {
    /// The signing account.
    #[arg(long)]
    signer: String,
    /// Its NEAR secret key, `ed25519:<base58>` (`-` reads it from stdin).
    #[arg(long)]
    secret_key: String,
    /// The contract account.
    #[arg(long)]
    receiver: String,
    /// The method name.
    #[arg(long)]
    method: String,
    /// Arguments as JSON, encoded as near-api-js encodes a JS object:
    /// `JSON.stringify(JSON.parse(args))`.
    #[arg(long)]
    args: String,
    /// Prepaid gas.
    #[arg(long)]
    gas: u64,
    /// Attached deposit in yoctoNEAR.
    #[arg(long)]
    deposit: u128,
    /// The transaction nonce (the access key's nonce + 1).
    #[arg(long)]
    nonce: u64,
    /// A recent block hash, base58.
    #[arg(long)]
    block_hash: String,
}

#[derive(Args)]
pub(crate) struct Call {
    /// RPC URL; repeat it for failover (tried in order).
    #[arg(long = "rpc", required = true)]
    rpc: Vec<String>,
    /// The signing account.
    #[arg(long)]
    signer: String,
    /// Its NEAR secret key, `ed25519:<base58>` (`-` reads it from stdin).
    #[arg(long)]
    secret_key: String,
    /// Attached deposit in yoctoNEAR.
    #[arg(long, default_value_t = 0)]
    deposit: u128,
    /// Prepaid gas.
    #[arg(long, default_value_t = delibera_near::CHANGE_CALL_GAS)]
    gas: u64,
    /// The contract account.
    contract: String,
    /// The method.
    method: String,
    /// The arguments as JSON (default `{}`).
    args: Option<String>,
}

pub(crate) fn run(command: NearCommand) -> anyhow::Result<Outcome> {
    match command {
        NearCommand::SignFunctionCall(args) => sign_function_call(args),
        NearCommand::Call(args) => call(args),
        NearCommand::View {
            rpc,
            contract,
            method,
            args,
        } => {
            let contract: AccountId = contract.parse().context("invalid contract account")?;
            let args = match args {
                Some(text) => {
                    let value: serde_json::Value =
                        serde_json::from_str(&text).context("the arguments are not JSON")?;
                    value.to_string()
                }
                None => "{}".to_owned(),
            };
            let client = NearRpc::new(&rpc).context("invalid RPC URL")?;
            let bytes = crate::block_on(client.call_function(
                &contract,
                &method,
                args.as_bytes(),
                &BlockReference::Final,
            ))
            .with_context(|| format!("view call {contract}.{method} failed"))?;
            // near-sdk contracts return JSON; anything else is shown as the RPC shows it.
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({ "resultBytes": bytes }));
            print_json(&value);
            Ok(Outcome::Success)
        }
    }
}

fn sign_function_call(args: SignFunctionCall) -> anyhow::Result<Outcome> {
    let signer_id: AccountId = args.signer.parse().context("invalid signer account")?;
    let receiver_id: AccountId = args.receiver.parse().context("invalid receiver account")?;
    let secret = arg_or_stdin(&args.secret_key)?;
    let signer = NearSigner::from_secret_key(signer_id, &secret).context("invalid secret key")?;
    let block_hash: CryptoHash = args.block_hash.parse().context("invalid block hash")?;
    let call = FunctionCall::json_text(args.method, &args.args, args.gas, args.deposit)
        .context("invalid --args")?;
    let signed = signer.sign(
        receiver_id,
        args.nonce,
        block_hash,
        vec![Action::FunctionCall(call)],
    )?;
    print_json(&json!({
        "signedTransactionBase64": signed.to_base64(),
        "hash": signed.hash().to_base58(),
    }));
    Ok(Outcome::Success)
}

fn call(args: Call) -> anyhow::Result<Outcome> {
    let signer_id: AccountId = args.signer.parse().context("invalid signer account")?;
    let contract: AccountId = args.contract.parse().context("invalid contract account")?;
    let secret = arg_or_stdin(&args.secret_key)?;
    let signer = NearSigner::from_secret_key(signer_id, &secret).context("invalid secret key")?;
    let call = FunctionCall::json_text(
        args.method.clone(),
        args.args.as_deref().unwrap_or("{}"),
        args.gas,
        args.deposit,
    )
    .context("the arguments are not JSON")?;
    let sender =
        TransactionSender::new(NearRpc::new(&args.rpc).context("invalid RPC URL")?, signer);
    let outcome = crate::block_on(sender.function_call(&contract, call))
        .with_context(|| format!("{contract}.{} failed", args.method))?;
    let result = outcome
        .success_value()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok());
    print_json(&json!({
        "txHash": outcome.transaction_hash.map(|hash| hash.to_base58()),
        "result": result,
    }));
    Ok(Outcome::Success)
}
