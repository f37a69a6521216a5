//! Display names a person can see and read: invisible, formatting, private,
//! unassigned and filler characters are refused with the code point named;
//! every script, accents and emoji are kept.

use axum::http::StatusCode;
use protocol_api::validation::{MAX_COMBINING_MARKS_IN_A_ROW, display_name};
use serde_json::json;

use crate::common::{Options, TestApp, TestDeployer};

/// Each refused name, and a piece of the message that says why.
fn refused() -> Vec<(String, &'static str)> {
    let stacked = format!("a{}", "\u{0301}".repeat(63));
    let one_too_many = format!("a{}", "\u{0301}".repeat(MAX_COMBINING_MARKS_IN_A_ROW + 1));
    vec![
        // Hangul fillers, alone and hidden in a name.
        ("\u{3164}".into(), "invisible character (U+3164)"),
        ("Bob\u{3164}".into(), "invisible character (U+3164)"),
        ("\u{115F}".into(), "(U+115F)"),
        ("\u{1160}".into(), "(U+1160)"),
        ("\u{FFA0}".into(), "(U+FFA0)"),
        // Tag characters: invisible, and able to carry hidden text.
        (
            "\u{E0041}".into(),
            "invisible formatting character (U+E0041)",
        ),
        ("Alice\u{E0041}\u{E0042}".into(), "(U+E0041)"),
        // The combining grapheme joiner.
        ("\u{034F}".into(), "(U+034F)"),
        ("A\u{034F}B".into(), "invisible character (U+034F)"),
        // A variation selector alone, or modifying nothing.
        ("\u{FE0F}".into(), "variation selector (U+FE0F)"),
        ("Bob \u{FE0F}".into(), "variation selector (U+FE0F)"),
        (
            "\u{1F98A}\u{FE0F}\u{FE0F}".into(),
            "variation selector (U+FE0F)",
        ),
        // The braille blank, alone or repeated.
        ("\u{2800}".into(), "invisible character (U+2800)"),
        ("\u{2800}\u{2800}\u{2800}".into(), "(U+2800)"),
        // Invisible musical formatting.
        ("\u{1D173}".into(), "(U+1D173)"),
        ("Bob\u{1D17A}".into(), "(U+1D17A)"),
        // Private use, in every plane.
        ("\u{F0000}".into(), "private-use character (U+F0000)"),
        ("Bob\u{E000}".into(), "private-use character (U+E000)"),
        // Stacked combining marks, and marks with nothing to sit on.
        (stacked, "more than 4 combining marks in a row"),
        (one_too_many, "more than 4 combining marks in a row"),
        (
            "\u{0301}\u{0302}\u{0303}".into(),
            "begins with a combining mark (U+0301)",
        ),
        ("\u{0301}Bob".into(), "begins with a combining mark"),
        // Zero-width spaces and joiners that join nothing.
        ("\u{200B}".into(), "(U+200B)"),
        (
            "Bob\u{200B}Ann".into(),
            "invisible formatting character (U+200B)",
        ),
        ("\u{200D}".into(), "zero-width joiner (U+200D)"),
        ("\u{200D}Bob".into(), "zero-width joiner (U+200D)"),
        ("Bob\u{200D}".into(), "zero-width joiner (U+200D)"),
        (
            "Bob\u{200D}\u{200D}Ann".into(),
            "zero-width joiner (U+200D)",
        ),
        ("Bob \u{200C}Ann".into(), "zero-width joiner (U+200C)"),
        // Bidirectional controls and other formatting.
        ("My DAO\u{202E}rotanidrooC".into(), "(U+202E)"),
        ("Bob\u{2066}Ann".into(), "(U+2066)"),
        ("Bob\u{200E}".into(), "(U+200E)"),
        ("Bob\u{061C}".into(), "(U+061C)"),
        ("\u{00AD}".into(), "(U+00AD)"),
        ("Bob\u{FEFF}".into(), "(U+FEFF)"),
        ("Bob\u{180E}".into(), "(U+180E)"),
        ("Bob\u{17B4}".into(), "invisible character (U+17B4)"),
        ("Bob\u{FFFC}".into(), "invisible character (U+FFFC)"),
        // Controls, separators, unassigned code points and noncharacters.
        ("bad\u{7}name".into(), "control character (U+0007)"),
        (
            "Bob\u{2028}Ann".into(),
            "line or paragraph separator (U+2028)",
        ),
        ("Bob\u{0378}".into(), "not assigned (U+0378)"),
        ("Bob\u{FFFF}".into(), "not assigned (U+FFFF)"),
        // Nothing to read.
        ("!!!".into(), "at least one visible letter, digit or emoji"),
        (
            "- . -".into(),
            "at least one visible letter, digit or emoji",
        ),
        ("$$$".into(), "at least one visible letter, digit or emoji"),
        ("".into(), "must not be empty"),
        ("   ".into(), "must not be empty"),
    ]
}

/// Names people really use.
fn accepted() -> Vec<String> {
    vec![
        "Worker Alpha".into(),
        "x".into(),
        "7".into(),
        "R2-D2 (backup)".into(),
        "Åsa Zoë".into(),
        // Decomposed accents: Zoë, and Vietnamese ệ with two marks.
        "Zoe\u{0308}".into(),
        "Nguye\u{0323}\u{0302}n".into(),
        // Exactly the most marks allowed in a row.
        format!("a{}", "\u{0301}".repeat(MAX_COMBINING_MARKS_IN_A_ROW)),
        "工作者一号".into(),
        "ワーカー".into(),
        "작업자".into(),
        "عامل الذكاء".into(),
        // Persian with a ZWNJ between two letters.
        "می\u{200C}خواهم".into(),
        // Devanagari with a virama and a ZWJ, and a Tibetan stack.
        "क्\u{200D}ष".into(),
        "कार्यकर्ता".into(),
        "བསྒྲུབས".into(),
        "สวัสดี".into(),
        // Emoji: alone, with text, ZWJ sequences, a variation selector
        // before a joiner, skin tones, flags and keycaps.
        "\u{1F98A}".into(),
        "\u{1F98A} Fox".into(),
        "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467} family".into(),
        "\u{2764}\u{FE0F}\u{200D}\u{1F525}".into(),
        "\u{1F44D}\u{1F3FD}".into(),
        "\u{1F1EB}\u{1F1F7} Paris".into(),
        "Team 1\u{FE0F}\u{20E3}".into(),
        // A CJK ideographic space between words.
        "東京\u{3000}支部".into(),
    ]
}

#[test]
fn invisible_and_unreadable_names_are_refused_with_the_code_point() {
    for (name, reason) in refused() {
        let error = display_name("displayName", &name)
            .expect_err(&format!("{name:?} must be refused"))
            .to_string();
        assert!(
            error.starts_with("displayName ") && error.contains(reason),
            "{name:?}: {error:?} does not say {reason:?}"
        );
    }
}

#[test]
fn names_in_every_script_and_with_emoji_are_kept() {
    for name in accepted() {
        assert_eq!(
            display_name("displayName", &format!("  {name} ")).map_err(|error| error.to_string()),
            Ok(name.clone()),
            "{name:?}"
        );
    }
}

#[tokio::test]
async fn the_provisioning_routes_refuse_them_with_a_400() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    for name in [
        "\u{3164}",
        "\u{2800}",
        "\u{E0041}",
        "a\u{0301}\u{0301}\u{0301}\u{0301}\u{0301}",
    ] {
        let (code, body) = app
            .call(
                "POST",
                "/api/provision/coordinator",
                Some(json!({ "displayName": name, "nearAccount": "c.testnet" })),
            )
            .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with("displayName "),
            "{body}"
        );
    }
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(json!({ "displayName": "\u{1F98A} Fox DAO", "nearAccount": "c.testnet" })),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
}
