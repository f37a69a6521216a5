//! NEAR account ids, validated as near-account-id 3.0 does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{AccountIdRule, Error, Result};

const MIN_LEN: usize = 2;
const MAX_LEN: usize = 64;

/// A valid NEAR account id, e.g. `registry.agents-coordinator.testnet`.
///
/// 2–64 bytes of `a-z`, `0-9` and the separators `-`, `_`, `.`; a separator
/// may not lead, trail or follow another separator. Implicit accounts (64 hex
/// characters, `0x…`) pass the same grammar. Serialized as a plain string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    /// Validates `text` as an account id.
    pub fn parse(text: &str) -> Result<Self> {
        validate(text).map_err(|rule| Error::InvalidAccountId {
            account_id: text.to_owned(),
            rule,
        })?;
        Ok(Self(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_separator(byte: u8) -> bool {
    matches!(byte, b'-' | b'_' | b'.')
}

fn validate(text: &str) -> std::result::Result<(), AccountIdRule> {
    if text.len() < MIN_LEN {
        return Err(AccountIdRule::TooShort);
    }
    if text.len() > MAX_LEN {
        return Err(AccountIdRule::TooLong);
    }
    let mut previous_was_separator = false;
    for (at, character) in text.char_indices() {
        let separator = character.is_ascii() && is_separator(character as u8);
        if !(separator || character.is_ascii_lowercase() || character.is_ascii_digit()) {
            return Err(AccountIdRule::InvalidCharacter { character, at });
        }
        if separator {
            if at == 0 {
                return Err(AccountIdRule::LeadingSeparator);
            }
            if previous_was_separator {
                return Err(AccountIdRule::AdjacentSeparators { at });
            }
        }
        previous_was_separator = separator;
    }
    if previous_was_separator {
        return Err(AccountIdRule::TrailingSeparator);
    }
    Ok(())
}

impl FromStr for AccountId {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text)
    }
}

impl TryFrom<String> for AccountId {
    type Error = Error;

    fn try_from(text: String) -> Result<Self> {
        validate(&text).map_err(|rule| Error::InvalidAccountId {
            account_id: text.clone(),
            rule,
        })?;
        Ok(Self(text))
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AccountId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for AccountId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for AccountId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Serialize for AccountId {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::try_from(text).map_err(serde::de::Error::custom)
    }
}
