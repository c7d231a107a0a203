//! W3C Trace Context (`traceparent`) carried in NATS headers from submission to result.
//! A submitter may send its own; the scheduler starts one when none (or an invalid one)
//! arrives. Every hop keeps the trace id and sends its own span id as the parent of the
//! next, and every log line about a job carries the trace id (the `job` span).

use async_nats::HeaderMap;

/// The header name, as the W3C spec writes it (NATS headers are case-sensitive).
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// A parsed `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

fn nonzero_u64() -> u64 {
    loop {
        let n = fastrand::u64(..);
        if n != 0 {
            return n;
        }
    }
}

impl TraceContext {
    /// A new trace, sampled.
    pub fn new_root() -> Self {
        let mut trace_id = 0;
        while trace_id == 0 {
            trace_id = fastrand::u128(..);
        }
        Self {
            trace_id,
            parent_id: nonzero_u64(),
            flags: 1,
        }
    }

    /// The same trace with a new span id: what this hop sends on.
    pub fn child(&self) -> Self {
        Self {
            parent_id: nonzero_u64(),
            ..*self
        }
    }

    /// Parses a header value. Version 00 exactly; a later version is read by its first
    /// four fields, as the spec asks; `ff`, bad hex, upper case and all-zero ids are not.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut parts = value.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        let lower_hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower_hex(version, 2) || version == "ff" || (version == "00" && rest.is_some()) {
            return None;
        }
        if !lower_hex(trace, 32) || !lower_hex(parent, 16) || !lower_hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// The `traceparent` header value.
    pub fn header_value(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }

    /// The trace id as logs and tools show it (32 lower-case hex digits).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The context in `headers`, if any valid one.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Option<Self> {
        headers?
            .get(HEADER_TRACEPARENT)
            .and_then(|v| Self::parse(v.as_str()))
    }

    /// The incoming context continued (a child span), or a new trace.
    pub fn continue_or_start(headers: Option<&HeaderMap>) -> Self {
        Self::from_headers(headers)
            .map(|c| c.child())
            .unwrap_or_else(Self::new_root)
    }

    /// Sets this context as `traceparent` on `headers`.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(HEADER_TRACEPARENT, self.header_value().as_str());
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The trace context of the job this task works on, when inside [`scope`].
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// Runs `work` with `ctx` as the current trace context: every message published with
/// [`crate::messages::headers_for`] inside carries it (as a child span), and `span` (the
/// `job` span, holding the trace id) is on every log line.
pub async fn scope<F: std::future::Future>(
    ctx: TraceContext,
    span: tracing::Span,
    work: F,
) -> F::Output {
    use tracing::Instrument;
    CURRENT.scope(ctx, work.instrument(span)).await
}

/// Records the job id on `span` (a [`job_span!`]) once it is known.
pub fn record_job_id(span: &tracing::Span, job_id: &str) {
    span.record("job_id", tracing::field::display(job_id));
}

/// The `job` span every log line about one job is written in; the job id is recorded
/// once known ([`record_job_id`]).
#[macro_export]
macro_rules! job_span {
    ($ctx:expr) => {
        tracing::info_span!(
            "job",
            trace_id = %$ctx.trace_id_hex(),
            job_id = tracing::field::Empty
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_round_trips() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(value).expect("valid");
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(ctx.flags, 1);
        assert_eq!(ctx.header_value(), value);
    }

    #[test]
    fn invalid_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version is read by its known fields.
        assert!(TraceContext::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what"
        )
        .is_some());
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.parent_id, root.parent_id);
        assert_eq!(TraceContext::parse(&child.header_value()), Some(child));

        let mut headers = HeaderMap::new();
        root.inject(&mut headers);
        let continued = TraceContext::continue_or_start(Some(&headers));
        assert_eq!(continued.trace_id, root.trace_id);
        let fresh = TraceContext::continue_or_start(None);
        assert_ne!(fresh.trace_id, root.trace_id);
    }
}
