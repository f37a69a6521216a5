//! The server's log [`subscriber`], and [`PlainFields`], how its lines
//! write their fields.
//!
//! Every request opens a span whose fields (method, route, request id) the
//! log formatter writes out when the span opens. `tracing_subscriber`'s
//! default field formatter writes each one through `Debug` and its colour
//! styles even when colours are off, which was about a fifth of what a
//! `GET /` cost the server in-process. [`PlainFields`] writes the same text
//! directly when it can, and leaves everything else to the default.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, Registry};

/// What the server logs unless `RUST_LOG` says otherwise: warnings from
/// every crate (an agent that could not be restored, a data file whose
/// permissions were tightened, reported by the library that found it) and
/// this server's own progress.
pub const DEFAULT_FILTER: &str = "warn,protocol_api=info,delibera_serve=info";

/// The server's subscriber, writing to `writer`: the filter `RUST_LOG`
/// asks for (or [`DEFAULT_FILTER`]), fields by [`PlainFields`], colour
/// codes only if `ansi` (a terminal: in a log file they are noise).
///
/// Plain levels for targets (`warn,protocol_api=debug`, the usual kind)
/// are applied as a [`Targets`] filter, which passes the same lines; any
/// other setting (spans or fields, `*`, spaces, a target named twice) as
/// the [`EnvFilter`] it always was, and one an `EnvFilter` refuses as
/// [`DEFAULT_FILTER`]. An `EnvFilter` takes shared locks whenever any span
/// opens, is entered, left or closed: four times per request, on cache
/// lines every core writes.
pub fn subscriber<W>(writer: W, ansi: bool) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let asked = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    tracing_subscriber::registry()
        .with(filter(asked.as_deref()))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(ansi)
                .fmt_fields(PlainFields::default()),
        )
}

/// The cheapest filter that applies `directives` (see [`subscriber`]) as
/// an `EnvFilter` would; with none, or with directives an `EnvFilter`
/// refuses, [`DEFAULT_FILTER`].
fn filter(directives: Option<&str>) -> Box<dyn Layer<Registry> + Send + Sync> {
    let directives = directives.unwrap_or(DEFAULT_FILTER);
    let Ok(env_filter) = EnvFilter::try_new(directives) else {
        return filter(None);
    };
    if plain_directives(directives)
        && let Ok(targets) = directives.parse::<Targets>()
    {
        return Box::new(targets);
    }
    Box::new(env_filter)
}

/// Whether `directives` are levels for targets only, written so that a
/// `Targets` filter reads them as an `EnvFilter` does: comma-separated
/// `target=level` pairs and at most one bare level, no target twice, no
/// empty entry, no space, no span or field.
fn plain_directives(directives: &str) -> bool {
    let mut targets = Vec::new();
    directives.split(',').all(|directive| {
        let (target, level) = match directive.split_once('=') {
            Some((target, level))
                if !target.is_empty()
                    && target.bytes().all(|byte| {
                        byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b':' | b'-')
                    }) =>
            {
                (target, level)
            }
            Some(_) => return false,
            None => ("", directive),
        };
        let first = !targets.contains(&target);
        targets.push(target);
        first && !level.is_empty() && level.parse::<LevelFilter>().is_ok()
    })
}

/// Writes fields exactly as [`DefaultFields`] does (a test compares them).
/// When colours are off and every field is a named string of printable
/// ASCII without quotes or backslashes, which is what the request span
/// holds, it writes `name="value"` pairs itself; anything else (a message,
/// a number, an error, a string that needs escaping) goes to the default.
#[derive(Debug)]
pub struct PlainFields {
    default: DefaultFields,
}

impl Default for PlainFields {
    fn default() -> Self {
        Self {
            default: DefaultFields::new(),
        }
    }
}

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        if !writer.has_ansi_escapes() {
            let mut check = AllPlain { plain: true };
            fields.record(&mut check);
            if check.plain {
                let mut plain = PlainWriter {
                    writer: &mut writer,
                    first: true,
                    result: Ok(()),
                };
                fields.record(&mut plain);
                return plain.result;
            }
        }
        self.default.format_fields(writer, fields)
    }
}

/// Whether a field's name is written as it is: `message` is written
/// without its name, `log.` fields are skipped and `r#` is stripped.
fn plain_name(name: &str) -> bool {
    name != "message" && !name.starts_with("log.") && !name.starts_with("r#")
}

/// Whether `Debug` writes `value` as itself between quotes: printable
/// ASCII other than `"` and `\`.
fn plain_value(value: &str) -> bool {
    value
        .bytes()
        .all(|byte| matches!(byte, b' '..=b'~') && byte != b'"' && byte != b'\\')
}

/// Finds out whether every field can be written plainly.
struct AllPlain {
    plain: bool,
}

impl Visit for AllPlain {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.plain &= plain_name(field.name()) && plain_value(value);
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {
        self.plain = false;
    }
}

/// Writes fields [`AllPlain`] found plain, as `DefaultFields` would.
struct PlainWriter<'a, 'writer> {
    writer: &'a mut Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl PlainWriter<'_, '_> {
    fn write(&mut self, field: &Field, value: &str) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        self.writer.write_str(field.name())?;
        self.writer.write_str("=\"")?;
        self.writer.write_str(value)?;
        self.writer.write_char('"')
    }
}

impl Visit for PlainWriter<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.write(field, value);
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {
        // Not reached: such a field makes `AllPlain` send every field to
        // the default formatter.
        self.result = Err(fmt::Error);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Failure;

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("it \"failed\"")
        }
    }

    impl std::error::Error for Failure {}

    /// Logs the same spans and events as the server might, under a
    /// subscriber whose fields are formatted by `fields`.
    fn log_with<F>(fields: F, ansi: bool) -> String
    where
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(ansi)
            .without_time()
            .fmt_fields(fields)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let values = [
                "",
                "GET",
                "/api/provision/status/{jobId}",
                "0b5e2a70-1c3d-4f6e-9a8b-7c6d5e4f3a2b",
                "it's",
                "say \"hi\"",
                "back\\slash",
                "tab\there",
                "line\nbreak",
                "\u{1b}[31mred",
                "café",
                "~ !#$%&()*+,-./:;<=>?@[]^_`{|}",
            ];
            for value in values {
                let span = tracing::info_span!("request", method = "GET", route = value);
                let _entered = span.enter();
                tracing::info!(request_id = value, "inside");
                tracing::info!(value);
                tracing::warn!(count = 3, flag = true, r#type = value, "mixed");
                let nested = tracing::info_span!("step", r#type = value, job = %value);
                let _nested = nested.enter();
                tracing::error!(error = &Failure as &dyn std::error::Error, "failed");
            }
            let empty = tracing::info_span!("empty");
            let _entered = empty.enter();
            tracing::info!("no fields");
            let recorded = tracing::info_span!("later", route = tracing::field::Empty);
            recorded.record("route", "/");
            let _entered = recorded.enter();
            tracing::debug!(detail = ?Some("debug"), "recorded later");
        });
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// The lines `filter` lets through of events at every level from a
    /// handful of targets.
    fn passed_by(filter: Box<dyn Layer<Registry> + Send + Sync>) -> String {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(filter).with(
            tracing_subscriber::fmt::layer()
                .with_writer(captured.clone())
                .with_ansi(false)
                .without_time(),
        );
        tracing::subscriber::with_default(subscriber, || {
            macro_rules! every_level {
                ($target:literal) => {
                    tracing::error!(target: $target, "error");
                    tracing::warn!(target: $target, "warn");
                    tracing::info!(target: $target, "info");
                    tracing::debug!(target: $target, "debug");
                    tracing::trace!(target: $target, "trace");
                };
            }
            every_level!("protocol_api");
            every_level!("protocol_api::store::writer");
            every_level!("protocol_api_other");
            every_level!("delibera_serve");
            every_level!("hyper::proto");
            every_level!("rusqlite");
            let request = tracing::info_span!("request", route = "/");
            let _inside = request.enter();
            every_level!("protocol_api");
        });
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn every_setting_passes_what_an_env_filter_passed() {
        for directives in [
            DEFAULT_FILTER,
            "info",
            "debug,hyper=warn",
            "warn,protocol_api::store=trace",
            "protocol_api=debug",
            "WARN,protocol_api=DEBUG",
            "off",
            "trace,protocol_api=off",
            "",
            "warn,",
            "debug,,hyper=warn",
            "protocol_api=debug,",
            "protocol_api=",
            "protocol_api",
            "warn, protocol_api=debug",
            "warn,protocol_api=debug,protocol_api=info",
            "info,warn",
            "*",
            "*=debug",
            "=debug",
            "=#!",
            "[request]=debug",
            "protocol_api[request]=debug",
            "[request{route}]=debug",
            "warn,[request{route=/}]=debug",
        ] {
            // What the server did before it chose between the two.
            let before =
                EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
            assert_eq!(
                passed_by(filter(Some(directives))),
                passed_by(Box::new(before)),
                "{directives:?}"
            );
        }
        let default = passed_by(filter(None));
        assert!(default.contains("INFO protocol_api: info"), "{default}");
        assert!(!default.contains("DEBUG"), "{default}");
    }

    #[test]
    fn only_plain_levels_for_targets_get_a_targets_filter() {
        for plain in [
            DEFAULT_FILTER,
            "info",
            "debug,hyper=warn",
            "protocol_api::store=trace",
        ] {
            assert!(plain_directives(plain), "{plain}");
        }
        for other in [
            "",
            "warn,",
            "protocol_api=",
            "protocol_api",
            "warn, protocol_api=debug",
            "warn,protocol_api=debug,protocol_api=info",
            "info,warn",
            "*=debug",
            "=debug",
            "[request]=debug",
        ] {
            assert!(!plain_directives(other), "{other}");
        }
    }

    #[test]
    fn writes_what_the_default_field_formatter_writes() {
        for ansi in [false, true] {
            let ours = log_with(PlainFields::default(), ansi);
            let default = log_with(DefaultFields::new(), ansi);
            assert!(ours.lines().count() > 40, "{ours}");
            assert_eq!(ours, default, "ansi: {ansi}");
        }
        let plain = log_with(PlainFields::default(), false);
        assert!(
            plain.contains(r#"request{method="GET" route="/api/provision/status/{jobId}"}"#),
            "{plain}"
        );
    }
}
