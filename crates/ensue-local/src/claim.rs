//! Claiming organisations: the hosted mode, in which a self-registered
//! organisation's API key is refused until a human claims the organisation.
//!
//! `POST /auth/agent-register` hands out a claim URL (`{base}/claim?token=…`)
//! and a verification code. `GET /claim?token=…` shows a page with a form;
//! `POST /claim` (JSON or a form post) with the token and the code claims the
//! organisation. Tokens and codes are stored as SHA-256 digests only, and
//! never logged.

use std::fmt;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::api_key::{digest_of, random_hex};
use crate::http::{AppState, BodyError, MAX_FORM_BODY_BYTES, error_json, read_body};
use crate::rpc;

/// Random bytes in a claim token (hex-encoded in the claim URL).
const TOKEN_BYTES: usize = 16;

/// Random bytes in a verification code: 8 hex digits, short enough to type.
const CODE_BYTES: usize = 4;

/// Whether the key of an organisation registered through
/// `POST /auth/agent-register` works at once or only once a human has
/// claimed the organisation.
///
/// The policy governs registration, the claim routes and enforcement
/// together. Organisations created by [`Store::register_org`](crate::Store::register_org)
/// or [`Store::add_key`](crate::Store::add_key) (the bootstrap organisation
/// among them) never need a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClaimPolicy {
    /// Keys work as soon as they are registered; there is nothing to claim
    /// (`GET /claim` says so, `POST /claim` is not routed). The default.
    #[default]
    Immediate,
    /// The hosted service's behaviour: a registered organisation's key gets
    /// HTTP 401 on every memory request until the organisation is claimed at
    /// its `claim_url` with its `verification_code`.
    ///
    /// Organisations registered in this mode stay unclaimed in the store; a
    /// server later started with [`ClaimPolicy::Immediate`] on the same data
    /// lets their keys in without a claim.
    RequireClaim,
}

/// The secrets that claim one organisation: the token in its claim URL and
/// the verification code a human types in.
///
/// Returned once, at registration; the store keeps only digests. `Debug`
/// never shows either secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimTicket {
    token: String,
    verification_code: String,
}

impl ClaimTicket {
    /// A fresh random token (32 hex digits) and code (8 hex digits).
    pub fn generate() -> Self {
        ClaimTicket {
            token: random_hex(TOKEN_BYTES),
            verification_code: random_hex(CODE_BYTES),
        }
    }

    /// The claim token, the `token` query parameter of the claim URL.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The verification code to enter when claiming.
    pub fn verification_code(&self) -> &str {
        &self.verification_code
    }

    /// What the store keeps instead of the token.
    pub(crate) fn token_digest(&self) -> [u8; 32] {
        digest_of(&self.token)
    }

    /// What the store keeps instead of the code.
    pub(crate) fn code_digest(&self) -> [u8; 32] {
        code_digest(&self.token, &self.verification_code)
    }
}

impl fmt::Debug for ClaimTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClaimTicket(<redacted>)")
    }
}

/// The digest stored for a verification code. It covers the token too, so
/// the short code cannot be guessed from the database without the token,
/// which is itself stored only as a digest. Surrounding whitespace and ASCII
/// case are ignored, as a human may type either.
pub(crate) fn code_digest(token: &str, code: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(token.as_bytes());
    hasher.update([0u8]);
    hasher.update(code.trim().to_ascii_lowercase().as_bytes());
    hasher.finalize().into()
}

/// Where an organisation stands, looked up by its claim token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimStatus {
    /// The organisation's name.
    pub org: String,
    /// Whether it has been claimed.
    pub claimed: bool,
}

/// The outcome of a successful claim.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claimed {
    /// The organisation's name.
    pub org: String,
    /// Whether an earlier claim had already succeeded (claiming is idempotent).
    pub already_claimed: bool,
}

/// `GET /claim?token=…`: a page naming the organisation, with a form that
/// posts the verification code. Without a token, the form asks for both.
pub(crate) async fn page(State(state): State<AppState>, uri: Uri) -> Response {
    let Some(token) = query_token(&uri) else {
        return html(StatusCode::OK, &claim_form(None, None, None));
    };
    match state.store().claim_status(&token).await {
        Ok(Some(status)) if status.claimed => {
            html(StatusCode::OK, &claimed_page(&status.org, true))
        }
        Ok(Some(status)) => html(
            StatusCode::OK,
            &claim_form(Some(&status.org), Some(&token), None),
        ),
        Ok(None) => html(StatusCode::NOT_FOUND, &unknown_token_page()),
        Err(error) => {
            tracing::error!(%error, "claim lookup failed");
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                &page_html("Error", "<p>Internal error.</p>"),
            )
        }
    }
}

/// How a claim was posted, and so how it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `application/json` (or no content type): answered with JSON.
    Json,
    /// `application/x-www-form-urlencoded`, the page's form: answered with HTML.
    Form,
}

/// `POST /claim` with `{"token", "verification_code"}` (JSON, or the same
/// fields form-encoded). The token may instead be the `token` query
/// parameter, so posting `{"verification_code"}` to the claim URL itself
/// also works; a token in the body wins.
pub(crate) async fn submit(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_ascii_lowercase());
    let kind = match content_type.as_deref() {
        None => Kind::Json,
        Some(value) if value.starts_with("application/json") => Kind::Json,
        Some(value) if value.starts_with("application/x-www-form-urlencoded") => Kind::Form,
        Some(_) => {
            return error_json(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "post the claim as application/json or application/x-www-form-urlencoded",
            );
        }
    };
    let bytes = match read_body(&headers, body, MAX_FORM_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            return refused(
                kind,
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large",
            );
        }
        Err(BodyError::Unreadable) => {
            return refused(
                kind,
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
    };
    let fields = match kind {
        Kind::Json => json_fields(&bytes),
        Kind::Form => Some(form_fields(&bytes)),
    };
    let Some(Fields {
        token: body_token,
        verification_code: code,
    }) = fields
    else {
        return refused(
            kind,
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object with string fields `token` and `verification_code`",
        );
    };
    let token = body_token
        .filter(|token| !token.is_empty())
        .or_else(|| query_token(&uri));
    let (Some(token), Some(code)) = (token, code.filter(|code| !code.trim().is_empty())) else {
        return refused(
            kind,
            StatusCode::BAD_REQUEST,
            "both `token` and `verification_code` are required",
        );
    };
    match state.store().claim_org(&token, &code).await {
        Ok(claimed) => {
            if !claimed.already_claimed {
                tracing::info!(org = %claimed.org, "organization claimed");
            }
            match kind {
                Kind::Json => rpc::json_response(
                    StatusCode::OK,
                    &json!({ "claimed": true, "org": claimed.org }),
                ),
                Kind::Form => html(StatusCode::OK, &claimed_page(&claimed.org, false)),
            }
        }
        Err(Error::WrongVerificationCode { org }) => {
            tracing::info!(%org, "claim refused: wrong verification code");
            match kind {
                Kind::Json => error_json(StatusCode::FORBIDDEN, "wrong verification code"),
                Kind::Form => html(
                    StatusCode::FORBIDDEN,
                    &claim_form(
                        Some(&org),
                        Some(&token),
                        Some("That verification code is not right. Try again."),
                    ),
                ),
            }
        }
        Err(Error::UnknownClaimToken) => {
            tracing::debug!("claim refused: unknown token");
            match kind {
                Kind::Json => error_json(StatusCode::NOT_FOUND, "unknown claim token"),
                Kind::Form => html(StatusCode::NOT_FOUND, &unknown_token_page()),
            }
        }
        Err(error) => {
            tracing::error!(%error, "claim failed");
            refused(kind, StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// `GET /claim` under [`ClaimPolicy::Immediate`]: nothing to claim.
pub(crate) async fn nothing_to_claim() -> Response {
    rpc::json_response(
        StatusCode::OK,
        &json!({
            "status": "active",
            "message": "delibera-ensue-local activates keys when they are registered: there is nothing to claim",
        }),
    )
}

/// The 401 body for a key whose organisation is not claimed yet.
///
/// The hosted service's body for this case is unknown; this shape is this
/// server's choice. `claim_url` is the claim page without a token: the
/// token is stored only as a digest, so the URL handed out at registration
/// cannot be rebuilt. That page asks for the token and the code.
pub(crate) fn not_claimed_body(state: &AppState, org: &str) -> Value {
    json!({
        "error": "organization not claimed",
        "org": org,
        "claim_url": state.link("claim"),
        "message": "this API key works once a human claims the organization: open the claim_url returned by POST /auth/agent-register and enter its verification_code",
    })
}

/// The fields of a posted claim, each as given (possibly absent).
#[derive(Debug, PartialEq, Eq)]
struct Fields {
    token: Option<String>,
    verification_code: Option<String>,
}

/// The fields of a JSON object; `None` unless the body is an object whose
/// present fields are strings.
fn json_fields(bytes: &[u8]) -> Option<Fields> {
    let body: Value = serde_json::from_slice(bytes).ok()?;
    let object = body.as_object()?;
    let field = |name: &str| -> Option<Option<String>> {
        match object.get(name) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(text)) => Some(Some(text.clone())),
            Some(_) => None,
        }
    };
    Some(Fields {
        token: field("token")?,
        verification_code: field("verification_code")?,
    })
}

/// The fields of a form-encoded body.
fn form_fields(bytes: &[u8]) -> Fields {
    let mut token = None;
    let mut code = None;
    for (name, value) in url::form_urlencoded::parse(bytes) {
        match name.as_ref() {
            "token" => token = Some(value.into_owned()),
            "verification_code" => code = Some(value.into_owned()),
            _ => {}
        }
    }
    Fields {
        token,
        verification_code: code,
    }
}

/// The non-empty `token` query parameter.
fn query_token(uri: &Uri) -> Option<String> {
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
        .filter(|token| !token.is_empty())
}

/// An error in the form the request was posted in.
fn refused(kind: Kind, status: StatusCode, message: &str) -> Response {
    match kind {
        Kind::Json => error_json(status, message),
        Kind::Form => html(
            status,
            &page_html("Claim failed", &format!("<p>{}</p>", escape(message))),
        ),
    }
}

/// An HTML answer. The page's URL may hold a claim token, so it is neither
/// cached nor sent on as a referrer.
fn html(status: StatusCode, page: &str) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        page.to_owned(),
    )
        .into_response()
}

/// The claim form. With a token it is a hidden field; without one the form asks for it.
fn claim_form(org: Option<&str>, token: Option<&str>, notice: Option<&str>) -> String {
    let heading = match org {
        Some(org) => format!(
            "<p>Claim the organization <strong>{}</strong> to activate its API key.</p>",
            escape(org)
        ),
        None => "<p>Enter the token of your claim link and its verification code.</p>".to_owned(),
    };
    let notice = notice
        .map(|text| format!("<p class=\"notice\">{}</p>", escape(text)))
        .unwrap_or_default();
    let token_field = match token {
        Some(token) => format!(
            "<input type=\"hidden\" name=\"token\" value=\"{}\">",
            escape(token)
        ),
        None => "<label>Claim token <input name=\"token\" required autocomplete=\"off\" spellcheck=\"false\"></label>".to_owned(),
    };
    // A relative action, so the form posts back to this server's `/claim`
    // whatever prefix the server is reached under.
    let body = format!(
        "{heading}{notice}\
         <form method=\"post\" action=\"claim\">{token_field}\
         <label>Verification code <input name=\"verification_code\" required autofocus \
         autocomplete=\"off\" spellcheck=\"false\" maxlength=\"64\"></label>\
         <button type=\"submit\">Claim</button></form>"
    );
    page_html("Claim organization", &body)
}

fn claimed_page(org: &str, already: bool) -> String {
    let text = if already {
        "is already claimed"
    } else {
        "is claimed"
    };
    page_html(
        "Organization claimed",
        &format!(
            "<p>The organization <strong>{}</strong> {text}: its API key works now.</p>",
            escape(org)
        ),
    )
}

fn unknown_token_page() -> String {
    page_html(
        "Unknown claim link",
        "<p>No organization has this claim link. Check that the whole link was copied.</p>",
    )
}

fn page_html(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · delibera-ensue-local</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}\
         label{{display:block;margin:1rem 0}}input{{display:block;font:inherit;margin-top:.25rem}}\
         .notice{{color:#a00}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>\n",
        title = escape(title),
    )
}

/// Escapes text for HTML element content and quoted attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_random_short_and_hidden() {
        let a = ClaimTicket::generate();
        let b = ClaimTicket::generate();
        assert_ne!(a, b);
        assert_eq!(a.token().len(), 32);
        assert_eq!(a.verification_code().len(), 8);
        assert!(a.verification_code().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(format!("{a:?}"), "ClaimTicket(<redacted>)");
    }

    #[test]
    fn codes_ignore_case_and_whitespace_and_are_bound_to_the_token() {
        let digest = code_digest("t1", "a1b2c3d4");
        assert_eq!(code_digest("t1", " A1B2c3D4\n"), digest);
        assert_ne!(code_digest("t2", "a1b2c3d4"), digest);
        assert_ne!(code_digest("t1", "a1b2c3d5"), digest);
    }

    #[test]
    fn fields_are_read_from_json_and_forms() {
        let fields = |token: Option<&str>, code: Option<&str>| Fields {
            token: token.map(str::to_owned),
            verification_code: code.map(str::to_owned),
        };
        assert_eq!(
            json_fields(br#"{"token":"t","verification_code":"c"}"#),
            Some(fields(Some("t"), Some("c")))
        );
        assert_eq!(
            json_fields(br#"{"verification_code":"c"}"#),
            Some(fields(None, Some("c")))
        );
        assert_eq!(json_fields(br#"{"verification_code":7}"#), None);
        assert_eq!(json_fields(b"[]"), None);
        assert_eq!(
            form_fields(b"token=t%20x&verification_code=c+d&other=1"),
            fields(Some("t x"), Some("c d"))
        );
        let uri: Uri = "/claim?x=1&token=abc".parse().unwrap();
        assert_eq!(query_token(&uri).as_deref(), Some("abc"));
        let uri: Uri = "/claim?token=".parse().unwrap();
        assert_eq!(query_token(&uri), None);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let form = claim_form(Some("<org>"), Some("\"t"), None);
        assert!(form.contains("&lt;org&gt;"));
        assert!(form.contains("value=\"&quot;t\""));
    }
}
