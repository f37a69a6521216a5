//! `delibera ensue serve` end to end: the startup line, SIGTERM, and a crash
//! (SIGKILL) followed by a restart on the same data directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::support::{exit_of, first_line, http};

/// A running `delibera ensue serve`, killed when dropped.
struct Served {
    child: Child,
    ready: Value,
}

impl Served {
    fn start(extra: &[&str]) -> Served {
        let child = Command::new(assert_cmd::cargo::cargo_bin("delibera"))
            .args(["ensue", "serve", "--addr", "127.0.0.1:0"])
            .args(extra)
            .env_clear()
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut served = Served {
            child,
            ready: Value::Null,
        };
        let line = first_line(&mut served.child);
        served.ready = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line:?}"));
        served
    }

    fn url(&self) -> &str {
        self.ready["url"].as_str().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "delibera-ensue-serve-{label}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One JSON-RPC call; returns the response message from the SSE event.
fn call(url: &str, api_key: &str, request: &Value) -> Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = runtime.block_on(async {
        http()
            .post(url)
            .bearer_auth(api_key)
            .json(request)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let event = body.strip_prefix("data: ").unwrap_or(&body);
    serde_json::from_str(event.trim_end()).unwrap()
}

fn tool(url: &str, api_key: &str, name: &str, arguments: Value) -> Value {
    let request = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": { "name": name, "arguments": arguments },
    });
    call(url, api_key, &request)["result"]["structuredContent"].clone()
}

#[test]
fn serve_prints_its_url_and_a_generated_key_once_listening() {
    let served = Served::start(&[]);
    assert_eq!(served.ready["storage"], "memory");
    assert_eq!(served.ready["org"], "local");
    assert!(served.url().starts_with("http://127.0.0.1:"));
    let api_key = served.ready["apiKey"].as_str().unwrap();
    assert!(api_key.starts_with("lmn_"));

    let pong = call(
        served.url(),
        api_key,
        &json!({ "jsonrpc": "2.0", "id": 9, "method": "ping" }),
    );
    assert_eq!(pong, json!({ "jsonrpc": "2.0", "id": 9, "result": {} }));
}

#[test]
fn a_given_bootstrap_key_is_not_printed() {
    let served = Served::start(&["--bootstrap-key", "lmn_given_key"]);
    assert!(served.ready.get("apiKey").is_none());
    let created = tool(
        served.url(),
        "lmn_given_key",
        "create_memory",
        json!({ "items": [{ "key_name": "k", "value": "v", "description": "d" }] }),
    );
    assert_eq!(created["results"][0]["status"], "success");
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut served = Served::start(&[]);
    let status = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(exit_of(&mut served.child).success());
}

#[test]
fn acknowledged_writes_survive_a_kill_and_restart() {
    let dir = TempDir::new("crash");
    let data_dir = dir.0.to_str().unwrap();
    let key = "lmn_crash_test";
    let args = ["--data-dir", data_dir, "--bootstrap-key", key];

    let served = Served::start(&args);
    assert!(
        served.ready["storage"]
            .as_str()
            .unwrap()
            .ends_with("ensue-local.sqlite3")
    );
    let items: Vec<Value> = (0..50)
        .map(|i| json!({ "key_name": format!("crash/{i:02}"), "value": format!("v{i}"), "description": "d" }))
        .collect();
    let created = tool(
        served.url(),
        key,
        "create_memory",
        json!({ "items": items }),
    );
    assert_eq!(created["results"].as_array().unwrap().len(), 50);
    // SIGKILL: no graceful shutdown, no chance to flush anything more.
    drop(served);

    let served = Served::start(&args);
    let names: Vec<String> = (0..50).map(|i| format!("crash/{i:02}")).collect();
    let read = tool(
        served.url(),
        key,
        "get_memory",
        json!({ "key_names": names }),
    );
    let results = read["results"].as_array().unwrap();
    assert_eq!(results.len(), 50);
    for (i, item) in results.iter().enumerate() {
        assert_eq!(item["status"], "success", "{item}");
        assert_eq!(item["value"], format!("v{i}"));
    }
}
