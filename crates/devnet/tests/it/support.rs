//! Starting a NEAR devnet on a free port, and bounded waits.

use std::future::Future;
use std::time::Duration;

use delibera_devnet::near::{NearDevnet, NearDevnetConfig};
use delibera_near::{AccountId, NearRpc, NearSigner, TransactionSender, TxExecutionStatus};
use tempfile::TempDir;

/// Every wait in these tests gives up after this long.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

pub(crate) fn account(text: &str) -> AccountId {
    text.parse().unwrap()
}

pub(crate) fn config(dir: &TempDir, block_time_ms: u64) -> NearDevnetConfig {
    let mut config = NearDevnetConfig::new(dir.path()).unwrap();
    config.block_time = Duration::from_millis(block_time_ms);
    config
}

pub(crate) async fn start(config: NearDevnetConfig) -> NearDevnet {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    within(NearDevnet::start(listener, config)).await.unwrap()
}

/// A devnet with 20 ms blocks in a fresh directory (kept alive by the `TempDir`).
pub(crate) async fn devnet() -> (NearDevnet, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let devnet = start(config(&dir, 20)).await;
    (devnet, dir)
}

pub(crate) async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("not done within {DEADLINE:?}"))
}

/// An HTTP client whose every request gives up after [`DEADLINE`].
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .unwrap()
}

pub(crate) fn rpc(devnet: &NearDevnet) -> NearRpc {
    NearRpc::with_timeout([devnet.url()], DEADLINE).unwrap()
}

/// A faucet account and a sender that waits for `FINAL`, so the next
/// transaction reads the nonce this one used (the sender reads keys at `final`).
pub(crate) fn user(devnet: &NearDevnet, name: &str) -> TransactionSender {
    let new = devnet.create_account(&account(name)).unwrap();
    let signer = NearSigner::from_secret_key(new.account_id, &new.secret_key).unwrap();
    TransactionSender::new(rpc(devnet), signer).with_wait_until(TxExecutionStatus::Final)
}

/// Waits until the devnet's head reaches `height`.
pub(crate) async fn wait_for_height(devnet: &NearDevnet, height: u64) {
    within(async {
        while devnet.height() < height {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// One raw JSON-RPC call; returns the HTTP status and the whole response body.
pub(crate) async fn raw(
    devnet: &NearDevnet,
    method: &str,
    params: serde_json::Value,
) -> (u16, serde_json::Value) {
    let body =
        serde_json::json!({"jsonrpc": "2.0", "id": "raw", "method": method, "params": params});
    let response = within(reqwest::Client::new().post(devnet.url()).json(&body).send())
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, within(response.json()).await.unwrap())
}
