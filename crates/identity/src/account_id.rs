//! NEAR account ids, validated as near-account-id 3.0 does: who owns an agent,
//! and which contract it is registered with.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

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

    /// The account that created this one as a sub-account (`factory.testnet`
    /// for `dao.factory.testnet`), or `None` for a top-level account
    /// (`alice.testnet`'s parent `testnet` is the registrar, not an owner).
    ///
    /// ```
    /// use delibera_identity::AccountId;
    ///
    /// # fn main() -> delibera_identity::Result<()> {
    /// let contract = AccountId::parse("mydao.coord-factory.agents-coordinator.testnet")?;
    /// let factory = contract.parent().unwrap();
    /// assert_eq!(factory.as_str(), "coord-factory.agents-coordinator.testnet");
    /// assert_eq!(AccountId::parse("alice.testnet")?.parent(), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn parent(&self) -> Option<AccountId> {
        let (_, parent) = self.0.split_once('.')?;
        // A parent without a dot is a top-level account: every named account
        // of the network descends from it, so it owns nothing in particular.
        if !parent.contains('.') {
            return None;
        }
        Some(AccountId(parent.to_owned()))
    }

    /// Whether this is a sub-account of `ancestor` at any depth.
    pub fn is_sub_account_of(&self, ancestor: &AccountId) -> bool {
        self.0
            .strip_suffix(ancestor.as_str())
            .is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1)
    }
}

/// The NEAR account-id rule a rejected id broke (near-account-id 3.0 `validation.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccountIdRule {
    /// Shorter than 2 bytes.
    TooShort,
    /// Longer than 64 bytes.
    TooLong,
    /// A character other than `a-z`, `0-9`, `-`, `_`, `.`.
    InvalidCharacter {
        /// The offending character.
        character: char,
        /// Its byte offset.
        at: usize,
    },
    /// Starts with a separator (`-`, `_`, `.`).
    LeadingSeparator,
    /// Ends with a separator.
    TrailingSeparator,
    /// Two separators in a row (`a..b`, `a-.b`).
    AdjacentSeparators {
        /// Byte offset of the second separator.
        at: usize,
    },
}

impl fmt::Display for AccountIdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort => f.write_str("it must be at least 2 characters long"),
            Self::TooLong => f.write_str("it must be at most 64 characters long"),
            Self::InvalidCharacter { character, at } => write!(
                f,
                "character {character:?} at byte {at} is not allowed (only a-z, 0-9 and the separators - _ .)"
            ),
            Self::LeadingSeparator => f.write_str("it must not start with a separator"),
            Self::TrailingSeparator => f.write_str("it must not end with a separator"),
            Self::AdjacentSeparators { at } => {
                write!(f, "two separators in a row at byte {at}")
            }
        }
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
