//! The deterministic, offline voter: rules from the task's parameters.

use serde::{Deserialize, Serialize};

use crate::{Ballot, Error, Result, TaskDefinition, TaskHandler, Vote};

/// A numeric policy on one parameter: it must exist, be a number (or a
/// numeric string) and lie within `min..=max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Threshold {
    /// Dotted path into the task's `parameters`, e.g. `budget.amount`.
    pub field: String,
    /// Smallest allowed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest allowed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// The rules the [`RuleVoter`] applies, read from `parameters.rules`.
///
/// Keywords match case-insensitively anywhere in the title or description.
/// A proposal is rejected when a deny keyword appears, a required keyword is
/// missing or a threshold is violated; otherwise it is approved when an
/// approve keyword appears, and gets `default` when none does (or none are given).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSet {
    /// Any of these rejects.
    #[serde(default)]
    pub deny_keywords: Vec<String>,
    /// Each of these must appear.
    #[serde(default)]
    pub require_keywords: Vec<String>,
    /// Any of these approves, when nothing rejects.
    #[serde(default)]
    pub approve_keywords: Vec<String>,
    /// Numeric policies on the parameters.
    #[serde(default)]
    pub thresholds: Vec<Threshold>,
    /// The vote when no rule decides; `Approved` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Vote>,
}

/// Votes by the [`RuleSet`] in the task's `parameters.rules`, or by its own
/// fallback rules when the task carries none. Deterministic and offline:
/// the default handler of the agent runtime.
#[derive(Debug, Clone, Default)]
pub struct RuleVoter {
    fallback: RuleSet,
}

impl RuleVoter {
    /// A voter whose fallback is "no rules" (approve, saying so).
    pub fn new() -> Self {
        Self::default()
    }

    /// A voter applying `rules` to tasks that carry no rules of their own.
    pub fn with_fallback(rules: RuleSet) -> Self {
        Self { fallback: rules }
    }

    /// Decides `task` (the same as [`TaskHandler::handle`], synchronously).
    pub fn decide(&self, task: &TaskDefinition) -> Result<Ballot> {
        let rules = match task.parameters.get("rules") {
            Some(value) if !value.is_null() => RuleSet::deserialize(value)
                .map_err(|error| Error::handler(format!("invalid rules in the task: {error}")))?,
            _ => self.fallback.clone(),
        };
        Ok(apply(&rules, task))
    }
}

#[async_trait::async_trait]
impl TaskHandler for RuleVoter {
    async fn handle(&self, task: &TaskDefinition) -> Result<Ballot> {
        self.decide(task)
    }
}

fn apply(rules: &RuleSet, task: &TaskDefinition) -> Ballot {
    let text = format!("{}\n{}", task.title, task.description).to_lowercase();
    let contains = |keyword: &String| text.contains(&keyword.to_lowercase());
    let mut objections = Vec::new();
    let mut passed = Vec::new();

    for keyword in rules.deny_keywords.iter().filter(|k| contains(k)) {
        objections.push(format!("deny keyword {keyword:?} found"));
    }
    if !rules.deny_keywords.is_empty() && objections.is_empty() {
        passed.push(format!(
            "none of {} deny keywords found",
            rules.deny_keywords.len()
        ));
    }
    for keyword in &rules.require_keywords {
        if contains(keyword) {
            passed.push(format!("required keyword {keyword:?} present"));
        } else {
            objections.push(format!("required keyword {keyword:?} missing"));
        }
    }
    for threshold in &rules.thresholds {
        match check_threshold(threshold, &task.parameters) {
            Ok(summary) => passed.push(summary),
            Err(objection) => objections.push(objection),
        }
    }

    if !objections.is_empty() {
        return Ballot::reject(format!("Rejected: {}.", objections.join("; ")));
    }
    let approving: Vec<&String> = rules
        .approve_keywords
        .iter()
        .filter(|k| contains(k))
        .collect();
    let (vote, decided_by) = if let Some(keyword) = approving.first() {
        (Vote::Approved, format!("approve keyword {keyword:?} found"))
    } else {
        let default = rules.default.unwrap_or(Vote::Approved);
        let why = if rules.approve_keywords.is_empty() {
            format!("no rule objected, default vote {default}")
        } else {
            format!("no approve keyword found, default vote {default}")
        };
        (default, why)
    };
    let reasoning = if passed.is_empty() {
        format!("{vote}: {decided_by}.")
    } else {
        format!("{vote}: {decided_by}; {}.", passed.join("; "))
    };
    Ballot { vote, reasoning }
}

/// `Ok(summary)` when the parameter satisfies the policy, `Err(objection)` otherwise.
fn check_threshold(
    threshold: &Threshold,
    parameters: &serde_json::Value,
) -> std::result::Result<String, String> {
    let field = &threshold.field;
    let value = field
        .split('.')
        .try_fold(parameters, |value, part| value.get(part))
        .ok_or_else(|| format!("parameter {field:?} missing (threshold rule)"))?;
    let number = match value {
        serde_json::Value::Number(number) => number.as_f64(),
        serde_json::Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|n| n.is_finite())
    .ok_or_else(|| format!("parameter {field:?} is not a number: {value}"))?;
    if let Some(max) = threshold.max.filter(|max| number > *max) {
        return Err(format!("{field} {number} exceeds max {max}"));
    }
    if let Some(min) = threshold.min.filter(|min| number < *min) {
        return Err(format!("{field} {number} is below min {min}"));
    }
    Ok(match (threshold.min, threshold.max) {
        (Some(min), Some(max)) => format!("{field} {number} within {min}..={max}"),
        (None, Some(max)) => format!("{field} {number} within max {max}"),
        (Some(min), None) => format!("{field} {number} meets min {min}"),
        (None, None) => format!("{field} {number} is a number"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(title: &str, description: &str, parameters: serde_json::Value) -> TaskDefinition {
        TaskDefinition {
            proposal_id: "p".into(),
            round_id: "r".into(),
            title: title.into(),
            description: description.into(),
            parameters,
            voting: Default::default(),
            deadline: chrono::Utc::now(),
        }
    }

    #[test]
    fn deny_keyword_rejects_and_is_named() {
        let rules = json!({"rules": {"denyKeywords": ["Rug", "drain"]}});
        let ballot = RuleVoter::new()
            .decide(&task("Fund a RUG pull", "", rules))
            .unwrap();
        assert_eq!(ballot.vote, Vote::Rejected);
        assert!(ballot.reasoning.contains("deny keyword \"Rug\" found"));
        assert!(!ballot.reasoning.contains("drain"));
    }

    #[test]
    fn thresholds_read_nested_numbers_and_numeric_strings() {
        let parameters = json!({
            "budget": {"amount": "25000"},
            "durationDays": 3,
            "rules": {"thresholds": [
                {"field": "budget.amount", "max": 10000},
                {"field": "durationDays", "min": 7}
            ]}
        });
        let ballot = RuleVoter::new()
            .decide(&task("Grant", "", parameters))
            .unwrap();
        assert_eq!(ballot.vote, Vote::Rejected);
        assert!(
            ballot
                .reasoning
                .contains("budget.amount 25000 exceeds max 10000")
        );
        assert!(ballot.reasoning.contains("durationDays 3 is below min 7"));
    }

    #[test]
    fn missing_or_non_numeric_threshold_field_rejects() {
        let parameters = json!({"amount": true, "rules": {"thresholds": [
            {"field": "amount", "max": 1},
            {"field": "absent", "max": 1}
        ]}});
        let ballot = RuleVoter::new().decide(&task("t", "", parameters)).unwrap();
        assert_eq!(ballot.vote, Vote::Rejected);
        assert!(ballot.reasoning.contains("\"amount\" is not a number"));
        assert!(ballot.reasoning.contains("\"absent\" missing"));
    }

    #[test]
    fn approve_keyword_and_passed_rules_are_explained() {
        let parameters = json!({"amount": 500, "rules": {
            "requireKeywords": ["audit"],
            "approveKeywords": ["public good"],
            "thresholds": [{"field": "amount", "min": 1, "max": 1000}],
            "default": "Rejected"
        }});
        let ballot = RuleVoter::new()
            .decide(&task("Public good grant", "Audit attached.", parameters))
            .unwrap();
        assert_eq!(ballot.vote, Vote::Approved);
        assert!(
            ballot
                .reasoning
                .contains("approve keyword \"public good\" found")
        );
        assert!(
            ballot
                .reasoning
                .contains("required keyword \"audit\" present")
        );
        assert!(ballot.reasoning.contains("amount 500 within 1..=1000"));
    }

    #[test]
    fn default_vote_applies_when_no_approve_keyword_matches() {
        let parameters = json!({"rules": {"approveKeywords": ["grant"], "default": "Rejected"}});
        let ballot = RuleVoter::new()
            .decide(&task("Upgrade", "", parameters))
            .unwrap();
        assert_eq!(ballot.vote, Vote::Rejected);
        assert!(
            ballot
                .reasoning
                .contains("no approve keyword found, default vote Rejected")
        );
    }

    #[test]
    fn fallback_rules_apply_when_the_task_has_none() {
        let voter = RuleVoter::with_fallback(RuleSet {
            deny_keywords: vec!["mint".into()],
            ..RuleSet::default()
        });
        let ballot = voter.decide(&task("Mint tokens", "", json!({}))).unwrap();
        assert_eq!(ballot.vote, Vote::Rejected);
        let ballot = voter.decide(&task("Burn tokens", "", json!(null))).unwrap();
        assert_eq!(ballot.vote, Vote::Approved);
        assert!(ballot.reasoning.contains("none of 1 deny keywords found"));
    }

    #[test]
    fn malformed_rules_are_a_handler_error() {
        let parameters = json!({"rules": {"denyKeyword": ["typo"]}});
        let error = RuleVoter::new()
            .decide(&task("t", "", parameters))
            .unwrap_err();
        assert!(matches!(error, Error::Handler { .. }), "{error}");
        assert!(error.to_string().contains("denyKeyword"));
    }
}
