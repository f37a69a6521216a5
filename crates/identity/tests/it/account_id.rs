//! NEAR account-id rules (near-account-id 3.0 `validation.rs`).

use delibera_identity::{AccountId, AccountIdRule, Error};

fn rule(text: &str) -> AccountIdRule {
    match text.parse::<AccountId>() {
        Err(Error::InvalidAccountId { account_id, rule }) => {
            assert_eq!(account_id, text);
            rule
        }
        other => panic!("{text:?} should be invalid, got {other:?}"),
    }
}

#[test]
fn valid_ids_pass() {
    for text in [
        "aa",
        "a.testnet",
        "registry.agents-coordinator.testnet",
        "worker_1.coordinator.near",
        "0x1234567890abcdef1234567890abcdef12345678",
        "98793cd91a3f870fb126f66285808c7e094afcfc4eda8a970f6648cdf0dbd6de",
        &"a".repeat(64),
    ] {
        let id: AccountId = text.parse().unwrap();
        assert_eq!(id.as_str(), text);
    }
}

#[test]
fn each_rule_is_named() {
    assert_eq!(rule("a"), AccountIdRule::TooShort);
    assert_eq!(rule(""), AccountIdRule::TooShort);
    assert_eq!(rule(&"a".repeat(65)), AccountIdRule::TooLong);
    assert_eq!(
        rule("Alice.near"),
        AccountIdRule::InvalidCharacter {
            character: 'A',
            at: 0
        }
    );
    assert_eq!(
        rule("al ice"),
        AccountIdRule::InvalidCharacter {
            character: ' ',
            at: 2
        }
    );
    assert_eq!(
        rule("alïce"),
        AccountIdRule::InvalidCharacter {
            character: 'ï',
            at: 2
        }
    );
    assert_eq!(rule(".alice"), AccountIdRule::LeadingSeparator);
    assert_eq!(rule("-alice"), AccountIdRule::LeadingSeparator);
    assert_eq!(rule("alice."), AccountIdRule::TrailingSeparator);
    assert_eq!(rule("alice_"), AccountIdRule::TrailingSeparator);
    assert_eq!(rule("a..b"), AccountIdRule::AdjacentSeparators { at: 2 });
    assert_eq!(rule("a-.b"), AccountIdRule::AdjacentSeparators { at: 2 });
    assert_eq!(rule("a_-b"), AccountIdRule::AdjacentSeparators { at: 2 });
}

#[test]
fn the_message_names_the_id_and_the_rule() {
    let error = "alice..near".parse::<AccountId>().unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid NEAR account id \"alice..near\": two separators in a row at byte 6"
    );
}

#[test]
fn serde_is_a_plain_string_and_validates() {
    let id: AccountId = "bob.testnet".parse().unwrap();
    assert_eq!(serde_json::to_string(&id).unwrap(), "\"bob.testnet\"");
    let back: AccountId = serde_json::from_str("\"bob.testnet\"").unwrap();
    assert_eq!(back, id);
    let error = serde_json::from_str::<AccountId>("\"Bob.testnet\"").unwrap_err();
    assert!(error.to_string().contains("not allowed"), "{error}");
}

#[test]
fn matches_the_reference_regex_on_generated_ids() {
    // ^(([a-z\d]+[-_])*[a-z\d]+\.)*([a-z\d]+[-_])*[a-z\d]+$ with 2..=64 bytes,
    // checked by a hand-written matcher over every string of up to 4
    // characters from a small alphabet.
    fn regex_matches(text: &str) -> bool {
        text.split('.').all(|part| {
            !part.is_empty()
                && part.split(['-', '_']).all(|piece| {
                    !piece.is_empty()
                        && piece
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                })
        })
    }
    let alphabet = ['a', '0', '-', '_', '.', 'A'];
    let mut texts = vec![String::new()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for text in &texts {
            for character in alphabet {
                next.push(format!("{text}{character}"));
            }
        }
        for text in &next {
            let expected = text.len() >= 2 && regex_matches(text);
            assert_eq!(text.parse::<AccountId>().is_ok(), expected, "{text:?}");
        }
        texts = next;
    }
}

#[test]
fn parents_are_named_accounts_never_top_level_ones() {
    let parse = |text: &str| text.parse::<AccountId>().unwrap();
    let contract = parse("mydao.coord-factory.agents-coordinator.testnet");
    assert_eq!(
        contract.parent(),
        Some(parse("coord-factory.agents-coordinator.testnet"))
    );
    assert_eq!(parse("agents-coordinator.testnet").parent(), None);
    assert_eq!(parse("alice.testnet").parent(), None);
    assert_eq!(parse("testnet").parent(), None);
    assert!(contract.is_sub_account_of(&parse("agents-coordinator.testnet")));
    assert!(!contract.is_sub_account_of(&contract));
    assert!(
        !parse("xagents-coordinator.testnet")
            .is_sub_account_of(&parse("agents-coordinator.testnet"))
    );
}
