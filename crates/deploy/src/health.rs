//! The health gate: an agent counts as deployed only when its public URL
//! answers a healthy body that names the expected DID, whatever deployed it.

use std::time::Duration;

use delibera_backoff::{Backoff, Jitter};
use delibera_identity::Did;
use serde_json::Value;
use tokio::time::Instant;

use crate::{Error, Result};

/// Where a wait stands, passed to the progress callback after every failed probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthProgress {
    /// Time since the wait began (for "waiting for URL (2m10s)").
    pub elapsed: Duration,
    /// Probes sent so far.
    pub attempt: u32,
    /// Why the last probe was not accepted.
    pub last_problem: String,
}

/// The accepted answer.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    /// Time from the first probe to the accepted one.
    pub elapsed: Duration,
    /// Probes sent, the accepted one included.
    pub attempts: u32,
    /// The accepted health body.
    pub body: Value,
}

/// Polling settings of [`HealthGate::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthGate {
    /// The pause after the first failed probe; it doubles after each further one.
    pub initial_interval: Duration,
    /// The longest pause between probes.
    pub max_interval: Duration,
    /// The longest a single probe may take.
    pub request_timeout: Duration,
}

impl Default for HealthGate {
    /// 2 s doubling to 15 s (the TypeScript server polls every 15 s), 10 s per probe.
    fn default() -> Self {
        HealthGate {
            initial_interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(15),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The progress callback: called after every rejected probe.
pub type OnHealthProgress<'a> = &'a mut (dyn FnMut(&HealthProgress) + Send);

impl HealthGate {
    /// Polls `GET url` until it answers 2xx JSON whose `did` is `expected_did` and
    /// whose `message` contains "running" (any case), or until `deadline` has passed.
    ///
    /// Probes start until `deadline`; the last one may take up to
    /// `request_timeout` beyond it. Fails with [`Error::HealthTimeout`] naming
    /// the last problem seen; the caller decides what to do with the deployment (usually tear it down).
    pub async fn wait(
        &self,
        http: &reqwest::Client,
        url: &str,
        expected_did: &Did,
        deadline: Duration,
        on_progress: OnHealthProgress<'_>,
    ) -> Result<HealthReport> {
        let started = Instant::now();
        let pauses =
            Backoff::new(self.initial_interval, self.max_interval).with_jitter(Jitter::None);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A probe is never cut short by the deadline, so the last problem
            // reported is a real answer (the wait may overrun by one probe).
            let probe_timeout = self.request_timeout;
            let problem =
                match tokio::time::timeout(probe_timeout, probe(http, url, expected_did)).await {
                    Ok(Ok(body)) => {
                        return Ok(HealthReport {
                            elapsed: started.elapsed(),
                            attempts: attempt,
                            body,
                        });
                    }
                    Ok(Err(problem)) => problem,
                    Err(_) => format!("no answer within {probe_timeout:?}"),
                };
            let elapsed = started.elapsed();
            tracing::debug!(%url, attempt, ?elapsed, %problem, "agent not healthy yet");
            on_progress(&HealthProgress {
                elapsed,
                attempt,
                last_problem: problem.clone(),
            });
            if elapsed >= deadline {
                return Err(Error::HealthTimeout {
                    url: url.to_owned(),
                    elapsed,
                    last_problem: problem,
                });
            }
            tokio::time::sleep(pauses.delay(attempt).min(deadline.saturating_sub(elapsed))).await;
        }
    }
}

/// One probe: the body when it is healthy, else why not.
async fn probe(
    http: &reqwest::Client,
    url: &str,
    expected_did: &Did,
) -> std::result::Result<Value, String> {
    let response = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|error| format!("no answer: {error}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    let body: Value = response
        .json()
        .await
        .map_err(|_| "the body is not JSON".to_owned())?;
    let message = body.get("message").and_then(Value::as_str).unwrap_or("");
    if !message.to_ascii_lowercase().contains("running") {
        return Err(format!("message {message:?} does not say running"));
    }
    match body.get("did").and_then(Value::as_str) {
        Some(did) if did == expected_did.as_str() => Ok(body),
        Some(did) => Err(format!("it serves {did}, not the expected {expected_did}")),
        None => Err("the body names no did".to_owned()),
    }
}
