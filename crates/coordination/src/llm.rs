//! A voter backed by any OpenAI-compatible chat-completions endpoint.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::error::excerpt;
use crate::{Ballot, Error, Result, TaskDefinition, TaskHandler, Vote};

/// The instructions every request carries; the answer format is strict JSON.
const SYSTEM_PROMPT: &str = "You are a voting agent of a DAO. Read the proposal and decide \
whether to approve it. Answer with exactly one JSON object and nothing else: \
{\"vote\": \"Approved\" or \"Rejected\", \"reasoning\": \"one to three sentences\"}.";

/// Where and how to ask the model.
#[derive(Clone)]
pub struct LlmConfig {
    /// Base URL up to the API version, e.g. `https://api.openai.com/v1`;
    /// requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// The model name.
    pub model: String,
    /// The bearer token, if the endpoint needs one.
    pub api_key: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl LlmConfig {
    /// A config with a 60 s timeout and no API key.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// Sets the API key.
    pub fn with_api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }
}

/// Asks a chat-completions model for a strict JSON vote.
///
/// The answer must be one JSON object `{"vote": "Approved"|"Rejected",
/// "reasoning": "…"}` (a surrounding Markdown code fence is tolerated); anything
/// else is [`Error::LlmMalformed`], so a worker reports `failed` rather than
/// guessing a vote.
#[derive(Debug, Clone)]
pub struct LlmVoter {
    config: LlmConfig,
    http: reqwest::Client,
}

impl LlmVoter {
    /// A voter for `config`.
    pub fn new(config: LlmConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(Error::LlmTransport)?;
        Ok(Self { config, http })
    }

    /// The request body sent for `task`.
    fn request_body(&self, task: &TaskDefinition) -> serde_json::Value {
        let proposal = json!({
            "proposalId": task.proposal_id,
            "title": task.title,
            "description": task.description,
            "parameters": task.parameters,
        });
        json!({
            "model": self.config.model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": proposal.to_string()},
            ],
        })
    }
}

#[async_trait::async_trait]
impl TaskHandler for LlmVoter {
    async fn handle(&self, task: &TaskDefinition) -> Result<Ballot> {
        let url = format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        );
        let mut request = self.http.post(url).json(&self.request_body(task));
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(Error::LlmTransport)?;
        let status = response.status();
        let body = response.text().await.map_err(Error::LlmTransport)?;
        if !status.is_success() {
            return Err(Error::LlmStatus {
                status: status.as_u16(),
                body: excerpt(&body),
            });
        }
        parse_completion(&body)
    }
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Answer {
    vote: String,
    reasoning: String,
}

fn malformed(reason: impl Into<String>, text: &str) -> Error {
    Error::LlmMalformed {
        reason: reason.into(),
        text: excerpt(text),
    }
}

/// Reads the vote out of a chat-completions response body.
fn parse_completion(body: &str) -> Result<Ballot> {
    let completion: Completion = serde_json::from_str(body)
        .map_err(|error| malformed(format!("not a chat completion ({error})"), body))?;
    let content = completion
        .choices
        .into_iter()
        .next()
        .and_then(|choice| choice.message.content)
        .ok_or_else(|| malformed("no message content in the first choice", body))?;
    let json = strip_code_fence(content.trim());
    let answer: Answer = serde_json::from_str(json)
        .map_err(|error| malformed(format!("answer is not the JSON vote ({error})"), &content))?;
    let vote = match answer.vote.trim().to_ascii_lowercase().as_str() {
        "approved" => Vote::Approved,
        "rejected" => Vote::Rejected,
        _ => {
            return Err(malformed(
                "vote must be \"Approved\" or \"Rejected\"",
                &content,
            ));
        }
    };
    let reasoning = answer.reasoning.trim();
    if reasoning.is_empty() {
        return Err(malformed("empty reasoning", &content));
    }
    Ok(Ballot {
        vote,
        reasoning: reasoning.to_owned(),
    })
}

/// Removes one surrounding Markdown code fence (```` ```json … ``` ````), which
/// many models add even when asked for bare JSON.
fn strip_code_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let Some(rest) = rest.strip_suffix("```") else {
        return text;
    };
    // Drop the info string (`json`) on the opening line.
    rest.split_once('\n').map_or(rest, |(_, body)| body).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(content: &str) -> String {
        json!({"choices": [{"message": {"role": "assistant", "content": content}}]}).to_string()
    }

    #[test]
    fn fenced_answer_is_accepted() {
        let body =
            completion("```json\n{\"vote\":\"rejected\",\"reasoning\":\"Too costly.\"}\n```");
        let ballot = parse_completion(&body).unwrap();
        assert_eq!(ballot, Ballot::reject("Too costly."));
    }

    #[test]
    fn config_debug_hides_the_key() {
        let config = LlmConfig::new("http://x", "m").with_api_key("sk-secret-value");
        assert!(!format!("{config:?}").contains("sk-secret-value"));
    }
}
