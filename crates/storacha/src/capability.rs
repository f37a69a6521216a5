//! Capabilities (`{with, can, nb?}`) and the attenuation rule between them.

use std::collections::BTreeMap;

use crate::{Cid, Error, Result, Value};

/// One capability of a UCAN: an ability (`can`) on a resource (`with`), with
/// optional caveats (`nb`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    can: String,
    with: String,
    nb: Option<BTreeMap<String, Value>>,
}

impl Capability {
    /// A capability without caveats. Checks the ability (lowercase, containing
    /// `/` or exactly `*`) and that `with` is a URI.
    pub fn new(can: impl Into<String>, with: impl Into<String>) -> Result<Self> {
        let can = can.into();
        let with = with.into();
        validate_ability(&can)?;
        if url::Url::parse(&with).is_err() {
            return Err(Error::InvalidResource { with });
        }
        Ok(Self {
            can,
            with,
            nb: None,
        })
    }

    /// The same capability with caveats (`nb`).
    pub fn with_caveats(mut self, nb: BTreeMap<String, Value>) -> Self {
        self.nb = Some(nb);
        self
    }

    /// The ability, e.g. `space/blob/add`.
    pub fn can(&self) -> &str {
        &self.can
    }

    /// The resource URI, e.g. the space's `did:key:…`.
    pub fn with(&self) -> &str {
        &self.with
    }

    /// The caveats, when present.
    pub fn nb(&self) -> Option<&BTreeMap<String, Value>> {
        self.nb.as_ref()
    }

    /// Whether this (a proof's) capability grants `claimed`, by @ucanto/validator's
    /// rules: the ability is equal, `*`, or a `…/*` prefix of it; the resource is
    /// equal or `ucan:*`; and every caveat this capability sets is set to the same
    /// value in `claimed` (a missing caveat here means "unrestricted").
    pub fn covers(&self, claimed: &Capability) -> bool {
        let can_matches = self.can == claimed.can
            || self.can == "*"
            || self
                .can
                .strip_suffix('*')
                .is_some_and(|prefix| prefix.ends_with('/') && claimed.can.starts_with(prefix));
        let with_matches = self.with == claimed.with || self.with == "ucan:*";
        let nb_matches = self.nb.iter().flatten().all(|(key, value)| {
            claimed
                .nb
                .as_ref()
                .and_then(|nb| nb.get(key))
                .is_some_and(|claimed_value| claimed_value == value)
        });
        can_matches && with_matches && nb_matches
    }

    pub(crate) fn to_value(&self) -> Value {
        let mut map = BTreeMap::new();
        map.insert("can".to_owned(), Value::from(self.can.as_str()));
        map.insert("with".to_owned(), Value::from(self.with.as_str()));
        if let Some(nb) = &self.nb {
            map.insert("nb".to_owned(), Value::Map(nb.clone()));
        }
        Value::Map(map)
    }

    pub(crate) fn from_value(value: &Value, cid: &Cid) -> Result<Self> {
        let malformed = |reason: &str| Error::MalformedUcan {
            cid: cid.to_string(),
            reason: reason.to_owned(),
        };
        let map = value
            .as_map()
            .ok_or_else(|| malformed("a capability is not a map"))?;
        let can = map
            .get("can")
            .and_then(Value::as_text)
            .ok_or_else(|| malformed("a capability lacks a text `can`"))?;
        let with = map
            .get("with")
            .and_then(Value::as_text)
            .ok_or_else(|| malformed("a capability lacks a text `with`"))?;
        let nb = match map.get("nb") {
            None => None,
            Some(Value::Map(nb)) => Some(nb.clone()),
            Some(_) => return Err(malformed("a capability's `nb` is not a map")),
        };
        if map.len() != 2 + usize::from(nb.is_some()) {
            return Err(malformed(
                "a capability has fields other than can, with, nb",
            ));
        }
        let capability = Self::new(can, with)?;
        Ok(match nb {
            Some(nb) => capability.with_caveats(nb),
            None => capability,
        })
    }
}

/// Checks an ability as dag-ucan reads it: lowercase, with a `/` (or exactly `*`).
pub fn validate_ability(can: &str) -> Result<()> {
    // dag-ucan lowercases on read; an uppercase ability would break the signature.
    let lowercase = can.to_lowercase() == can;
    if lowercase && (can == "*" || can.contains('/')) {
        Ok(())
    } else {
        Err(Error::InvalidAbility {
            ability: can.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPACE: &str = "did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX";

    fn cap(can: &str, with: &str) -> Capability {
        Capability::new(can, with).unwrap()
    }

    #[test]
    fn abilities_are_validated() {
        for good in ["*", "space/blob/add", "space/content/serve/*", "a/b"] {
            assert!(validate_ability(good).is_ok(), "{good}");
        }
        for bad in ["", "store", "Space/blob/add", "**"] {
            assert!(
                matches!(validate_ability(bad), Err(Error::InvalidAbility { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            Capability::new("upload/add", "not a uri"),
            Err(Error::InvalidResource { .. })
        ));
    }

    #[test]
    fn covers_follows_the_validator_patterns() {
        let claimed = cap("space/content/serve/x", SPACE);
        assert!(cap("space/content/serve/x", SPACE).covers(&claimed));
        assert!(cap("space/content/serve/*", SPACE).covers(&claimed));
        assert!(cap("space/*", SPACE).covers(&claimed));
        assert!(cap("*", SPACE).covers(&claimed));
        assert!(cap("space/content/serve/x", "ucan:*").covers(&claimed));
        assert!(!cap("space/content/serve", SPACE).covers(&claimed));
        assert!(!cap("space/content/ser*", SPACE).covers(&claimed));
        assert!(!cap("upload/*", SPACE).covers(&claimed));
        assert!(!cap("space/content/serve/x", "did:web:other").covers(&claimed));
    }

    #[test]
    fn caveats_narrow_a_capability() {
        let resource = |n: u64| BTreeMap::from([("resource".to_owned(), Value::from(n))]);
        let unrestricted = cap("space/content/decrypt", SPACE);
        let only_one = unrestricted.clone().with_caveats(resource(1));
        assert!(unrestricted.covers(&only_one));
        assert!(only_one.covers(&only_one));
        assert!(!only_one.covers(&unrestricted));
        assert!(!only_one.covers(&unrestricted.clone().with_caveats(resource(2))));
    }
}
