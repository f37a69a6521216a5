//! Input validation shared by the routes. Each check returns the message the
//! caller sees in `{"error": …}`.

use std::collections::HashMap;
use std::sync::{LazyLock, PoisonError, RwLock};

use delibera_identity::{AccountId, Did};
use unicode_properties::{
    GeneralCategory, GeneralCategoryGroup, UnicodeEmoji, UnicodeGeneralCategory,
};

use crate::error::ApiError;

/// Longest display name, in characters. Every place a name reaches (the CVM
/// name, the Ensue org name) takes a slug of it cut to fit, so the bound only
/// keeps abuse out: a coordinator's owner has signed the factory transaction
/// before this name arrives, and must not be refused for a long one.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;

/// The most combining marks allowed in a row. Real writing stacks at most
/// three on one letter (Vietnamese tones, Tibetan stacks, Indic vowel signs);
/// longer runs only pile marks up over the neighbouring lines.
pub const MAX_COMBINING_MARKS_IN_A_ROW: usize = 4;

const ZERO_WIDTH_NON_JOINER: char = '\u{200C}';
const ZERO_WIDTH_JOINER: char = '\u{200D}';

/// Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties):
/// characters a renderer shows as nothing at all, such as zero-width spaces,
/// bidirectional controls, Hangul fillers, tags and variation selectors.
const DEFAULT_IGNORABLE: [(char, char); 17] = [
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFF8}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E0FFF}'),
];

/// Characters with a width that still show nothing: the braille blank
/// pattern and the object replacement character.
const BLANK: [char; 2] = ['\u{2800}', '\u{FFFC}'];

fn is_default_ignorable(c: char) -> bool {
    DEFAULT_IGNORABLE
        .iter()
        .any(|&(first, last)| (first..=last).contains(&c))
}

/// Variation selectors, which choose how the character before them is drawn
/// (U+FE0F asks for the emoji form), and Mongolian free variation selectors.
fn is_variation_selector(c: char) -> bool {
    matches!(c,
        '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}'
        | '\u{180B}'..='\u{180D}' | '\u{180F}')
}

fn is_mark(c: char) -> bool {
    c.general_category_group() == GeneralCategoryGroup::Mark
}

/// A letter, a digit or an emoji: what makes a name readable.
fn is_readable(c: char) -> bool {
    matches!(
        c.general_category_group(),
        GeneralCategoryGroup::Letter | GeneralCategoryGroup::Number
    ) || (c.general_category() == GeneralCategory::OtherSymbol && c.is_emoji_char())
}

/// What a joiner may stand between: anything visible, or a variation
/// selector (an emoji drawn as emoji just before the joiner, as in ❤️‍🔥).
fn is_joinable(c: char) -> bool {
    !c.is_whitespace()
        && c != ZERO_WIDTH_JOINER
        && c != ZERO_WIDTH_NON_JOINER
        && (is_variation_selector(c) || !is_default_ignorable(c))
}

/// Why the character at `index` may not stand in a display name; `None`
/// when it may.
fn refusal(chars: &[char], index: usize) -> Option<String> {
    let c = chars[index];
    let before = index.checked_sub(1).map(|i| chars[i]);
    let after = chars.get(index + 1).copied();
    let code = format!("U+{:04X}", u32::from(c));
    // ZWJ and ZWNJ shape emoji sequences and Arabic, Persian and Indic
    // words, but only between two visible characters.
    if c == ZERO_WIDTH_JOINER || c == ZERO_WIDTH_NON_JOINER {
        let joins = before.is_some_and(is_joinable) && after.is_some_and(is_joinable);
        return (!joins).then(|| {
            format!(
                "has a zero-width joiner ({code}) that joins nothing: it may only stand \
                 between two visible characters"
            )
        });
    }
    if is_variation_selector(c) {
        let modifies_something = before.is_some_and(|before| {
            !before.is_whitespace() && !is_mark(before) && !is_default_ignorable(before)
        });
        return (!modifies_something).then(|| {
            format!("has a variation selector ({code}) that follows no character it could modify")
        });
    }
    let kind = match c.general_category() {
        GeneralCategory::Control => Some("a control character"),
        GeneralCategory::Format => Some("an invisible formatting character"),
        GeneralCategory::PrivateUse => Some("a private-use character"),
        GeneralCategory::Unassigned | GeneralCategory::Surrogate => {
            Some("a character Unicode has not assigned")
        }
        GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
            Some("a line or paragraph separator")
        }
        _ if is_default_ignorable(c) || BLANK.contains(&c) => Some("an invisible character"),
        _ => None,
    };
    if let Some(kind) = kind {
        return Some(format!("contains {kind} ({code})"));
    }
    if index == 0 && is_mark(c) {
        return Some(format!(
            "begins with a combining mark ({code}), which has no letter to sit on"
        ));
    }
    None
}

/// A display name: 1–256 characters, surrounding spaces trimmed, that a
/// person can see and read.
///
/// Refused: control, formatting, private-use and unassigned characters, and
/// invisible ones (zero-width spaces, bidirectional overrides, Hangul
/// fillers, tag characters, the braille blank); more than
/// [`MAX_COMBINING_MARKS_IN_A_ROW`] combining marks in a row, or one at the
/// start; a name with no letter, digit or emoji. Kept: every script,
/// combining accents, emoji with their variation selectors, skin tones and
/// ZWJ sequences, and ZWJ/ZWNJ between two visible characters (Persian,
/// Indic). Tag characters are refused even inside emoji subdivision flags,
/// because they can carry hidden text.
pub fn display_name(field: &str, value: &str) -> Result<String, ApiError> {
    let trimmed = value.trim();
    let chars: Vec<char> = trimmed.chars().collect();
    let count = chars.len();
    if count == 0 {
        return Err(ApiError::BadRequest(format!("{field} must not be empty")));
    }
    if count > MAX_DISPLAY_NAME_CHARS {
        return Err(ApiError::BadRequest(format!(
            "{field} must be at most {MAX_DISPLAY_NAME_CHARS} characters (got {count})"
        )));
    }
    let mut marks_in_a_row = 0;
    for (index, &c) in chars.iter().enumerate() {
        if let Some(reason) = refusal(&chars, index) {
            return Err(ApiError::BadRequest(format!("{field} {reason}")));
        }
        marks_in_a_row = if is_mark(c) { marks_in_a_row + 1 } else { 0 };
        if marks_in_a_row > MAX_COMBINING_MARKS_IN_A_ROW {
            return Err(ApiError::BadRequest(format!(
                "{field} stacks more than {MAX_COMBINING_MARKS_IN_A_ROW} combining marks in a row"
            )));
        }
    }
    if !chars.iter().copied().any(is_readable) {
        return Err(ApiError::BadRequest(format!(
            "{field} must contain at least one visible letter, digit or emoji"
        )));
    }
    Ok(trimmed.to_owned())
}

/// A `did:key` Ed25519 DID.
pub fn did(field: &str, value: &str) -> Result<Did, ApiError> {
    let text = value.trim();
    if let Some(did) = PARSED_DIDS.get(text) {
        return Ok(did);
    }
    let did = text.parse::<Did>().map_err(|error| {
        ApiError::BadRequest(format!("{field} is not a valid did:key: {error}"))
    })?;
    PARSED_DIDS.keep(&did);
    Ok(did)
}

/// Valid DIDs met lately, by their text. Reading one decompresses its key's
/// curve point (in the load benchmark ≈ 6 of the ≈ 48 µs that answering a
/// worker's provisioning request costs), and the DIDs a server is given
/// repeat: every worker that joins a coordinator names it. Only a DID that
/// parsed is kept, so an invalid one is refused afresh each time.
static PARSED_DIDS: LazyLock<ParsedDids> = LazyLock::new(ParsedDids::default);

/// How many DIDs [`PARSED_DIDS`] keeps before starting over.
const PARSED_DIDS_KEPT: usize = 1024;

#[derive(Default)]
struct ParsedDids(RwLock<HashMap<String, Did>>);

impl ParsedDids {
    fn get(&self, text: &str) -> Option<Did> {
        let kept = self.0.read().unwrap_or_else(PoisonError::into_inner);
        kept.get(text).cloned()
    }

    fn keep(&self, did: &Did) {
        let mut kept = self.0.write().unwrap_or_else(PoisonError::into_inner);
        // Starting over is simpler than an eviction order, and the DIDs in
        // use come back at their next request.
        if kept.len() >= PARSED_DIDS_KEPT {
            kept.clear();
        }
        kept.insert(did.as_str().to_owned(), did.clone());
    }
}

/// A NEAR account id by NEAR's rules.
pub fn near_account(field: &str, value: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(value.trim()).map_err(|error| {
        ApiError::BadRequest(format!("{field} is not a valid NEAR account id: {error}"))
    })
}

/// A public endpoint URL: `https`, or in local mode also `http` on a loopback host.
pub fn endpoint_url(
    field: &str,
    value: &str,
    allow_loopback_http: bool,
) -> Result<String, ApiError> {
    let value = value.trim();
    let parsed = url::Url::parse(value)
        .map_err(|error| ApiError::BadRequest(format!("{field} is not a valid URL: {error}")))?;
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match parsed.scheme() {
        "https" if parsed.host_str().is_some() => Ok(value.trim_end_matches('/').to_owned()),
        "http" if allow_loopback_http && loopback => Ok(value.trim_end_matches('/').to_owned()),
        "http" if loopback => Err(ApiError::BadRequest(format!(
            "{field} must be an https URL (http on localhost is accepted only in local mode)"
        ))),
        _ => Err(ApiError::BadRequest(format!(
            "{field} must be an https URL"
        ))),
    }
}

/// `1 ≤ minWorkers ≤ maxWorkers ≤ 255`, with the defaults 1 and 10.
pub fn worker_bounds(min: Option<i64>, max: Option<i64>) -> Result<(u8, u8), ApiError> {
    let min = min.unwrap_or(1);
    let max = max.unwrap_or(10);
    if !(1..=255).contains(&min) {
        return Err(ApiError::BadRequest(
            "minWorkers must be between 1 and 255".into(),
        ));
    }
    if !(1..=255).contains(&max) {
        return Err(ApiError::BadRequest(
            "maxWorkers must be between 1 and 255".into(),
        ));
    }
    if min > max {
        return Err(ApiError::BadRequest(format!(
            "minWorkers ({min}) must not exceed maxWorkers ({max})"
        )));
    }
    Ok((min as u8, max as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names() {
        assert_eq!(
            display_name("displayName", "  Worker Alpha ").unwrap(),
            "Worker Alpha"
        );
        assert!(display_name("displayName", " ").is_err());
        assert!(display_name("displayName", &"é".repeat(MAX_DISPLAY_NAME_CHARS)).is_ok());
        assert!(display_name("displayName", &"é".repeat(MAX_DISPLAY_NAME_CHARS + 1)).is_err());
        assert!(display_name("displayName", "bad\u{7}name").is_err());
    }

    #[test]
    fn endpoint_urls() {
        assert_eq!(
            endpoint_url("e", "https://a.example/", false).unwrap(),
            "https://a.example"
        );
        assert!(endpoint_url("e", "http://a.example", true).is_err());
        assert!(endpoint_url("e", "http://127.0.0.1:4000", false).is_err());
        assert_eq!(
            endpoint_url("e", "http://127.0.0.1:4000", true).unwrap(),
            "http://127.0.0.1:4000"
        );
        assert!(endpoint_url("e", "ftp://a.example", true).is_err());
        assert!(endpoint_url("e", "not a url", true).is_err());
    }

    #[test]
    fn bounds() {
        assert_eq!(worker_bounds(None, None).unwrap(), (1, 10));
        assert_eq!(worker_bounds(Some(3), Some(3)).unwrap(), (3, 3));
        assert!(worker_bounds(Some(0), None).is_err());
        assert!(worker_bounds(Some(5), Some(4)).is_err());
        assert!(worker_bounds(None, Some(256)).is_err());
        assert!(worker_bounds(Some(-1), None).is_err());
    }

    #[test]
    fn accounts_and_dids() {
        assert_eq!(
            near_account("nearAccount", "alice.testnet")
                .unwrap()
                .as_str(),
            "alice.testnet"
        );
        assert!(near_account("nearAccount", "Alice.testnet").is_err());
        assert!(near_account("nearAccount", "a..b").is_err());
        assert!(
            did(
                "coordinatorDid",
                "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH"
            )
            .is_ok()
        );
        assert!(did("coordinatorDid", "did:web:example.com").is_err());
    }

    #[test]
    fn a_did_read_again_is_the_same_and_a_bad_one_is_refused_every_time() {
        let text = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";
        let first = did("coordinatorDid", text).unwrap();
        assert_eq!(did("coordinatorDid", &format!(" {text} ")).unwrap(), first);
        assert_eq!(PARSED_DIDS.get(text), Some(first));
        // An Ed25519 `did:key` whose 32 bytes (all 2) are no curve point.
        let off_curve = "did:key:z6Mkeb6dsrBTX95vPgLiZAcgRr6XJthFm1czoqFEx34DQtRo";
        for _ in 0..2 {
            let refused = did("coordinatorDid", off_curve).unwrap_err().to_string();
            assert!(refused.contains("not a curve point"), "{refused}");
            assert!(PARSED_DIDS.get(off_curve).is_none());
        }
    }

    #[test]
    fn the_dids_kept_are_bounded() {
        let kept = ParsedDids::default();
        for _ in 0..PARSED_DIDS_KEPT + 10 {
            kept.keep(&delibera_identity::Keypair::generate().did());
        }
        let count = kept.0.read().unwrap().len();
        assert!((1..=PARSED_DIDS_KEPT).contains(&count), "{count}");
    }
}
