//! How the text log writes fields: `name=value`, as tracing-subscriber's default does, but
//! without its styling calls when the output has no colours. Every request's span formats
//! its four fields when it is made (`request_id`, `client`, `method`, `path`), so the
//! default's per-field `Style::paint` (a no-op without colours, still a `Display` through
//! `core::fmt` for each name and each `=`) was half of what tracing cost a request.
//! Messages, errors and coloured output are left to the default formatter, unchanged.
//!
//! The fields are gathered on the stack and handed to the writer in one piece: the writer
//! of a span's fields is a `String` that starts empty, and written field by field it grew
//! five times for a request's span (five allocations and copies a request).

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};
use tracing_subscriber::fmt::FormatFields;

/// The text log's field formatter.
#[derive(Debug, Default)]
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        if writer.has_ansi_escapes() {
            return DefaultFields::new().format_fields(writer, fields);
        }
        let mut visitor = Plain {
            writer,
            pending: Pending::default(),
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.flush();
        visitor.result
    }
}

struct Plain<'writer> {
    writer: Writer<'writer>,
    /// What is written but not yet handed to the writer.
    pending: Pending,
    /// Nothing written yet: no space before the next field.
    empty: bool,
    result: fmt::Result,
}

/// Text gathered on the stack for the writer (whole `str`s only, so always UTF-8).
struct Pending {
    bytes: [u8; PENDING],
    len: usize,
}

/// Room for a request span's fields (id, client, method, path: ~80 bytes) with a margin.
const PENDING: usize = 256;

impl Default for Pending {
    fn default() -> Self {
        Pending {
            bytes: [0; PENDING],
            len: 0,
        }
    }
}

impl Pending {
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.bytes.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

impl Plain<'_> {
    /// Hands what is gathered to the writer.
    fn flush(&mut self) {
        if self.pending.len > 0 {
            self.result = self
                .result
                .and_then(|()| self.writer.write_str(self.pending.as_str()));
            self.pending.len = 0;
        }
    }

    /// Hands one field to the default formatter (messages: their escaping; errors: their
    /// sources).
    fn default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        self.flush();
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.empty);
        record(&mut visitor);
        self.result = tracing_subscriber::field::VisitOutput::finish(visitor);
        self.empty = false;
    }
}

impl Visit for Plain<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.default(|v| v.record_str(field, value));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.default(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name == "message" {
            return self.default(|v| v.record_debug(field, value));
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        let space = if self.empty { "" } else { " " };
        self.empty = false;
        // The name and `=` written as they are: only the value needs `core::fmt`.
        self.result = self
            .write_str(space)
            .and_then(|()| self.write_str(name))
            .and_then(|()| self.write_str("="))
            .and_then(|()| write!(self, "{value:?}"));
    }
}

/// Appends to what is gathered; what does not fit goes to the writer after it.
impl fmt::Write for Plain<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.pending.len + s.len();
        match self.pending.bytes.get_mut(self.pending.len..end) {
            Some(room) => {
                room.copy_from_slice(s.as_bytes());
                self.pending.len = end;
                Ok(())
            }
            None => {
                self.flush();
                self.result?;
                self.writer.write_str(s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The same events and spans through the default formatter and this one.
    fn logged(plain: bool) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .without_time()
            .with_writer(move || out.clone());
        let emit = || {
            let span = tracing::info_span!("request", request_id = %"vl-1", client = %"127.0.0.1", r#type = "x", model = tracing::field::Empty);
            span.record("model", tracing::field::display("tiny:latest"));
            let _in = span.enter();
            let err = std::io::Error::other("disk gone");
            tracing::warn!(
                n = 3,
                text = "q\"uoted",
                // longer than the gathering buffer: written past it, in order
                long = %"0123456789".repeat(30),
                after = 1,
                error = &err as &dyn std::error::Error,
                "a \x1b[31mred\x1b[0m message {}",
                7
            );
            tracing::info!("only a message");
        };
        if plain {
            tracing::subscriber::with_default(
                tracing_subscriber::registry().with(layer.fmt_fields(PlainFields)),
                emit,
            );
        } else {
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn the_text_log_reads_exactly_as_with_the_default_formatter() {
        let default = logged(false);
        assert!(default.contains("request_id=vl-1"), "{default}");
        assert!(default.contains("model=tiny:latest"), "{default}");
        assert!(default.contains("disk gone"), "{default}");
        assert!(default.contains("789 after=1"), "{default}");
        assert_eq!(logged(true), default);
    }
}
