//! Viewport traces: one JSON object per line.
//!
//! ```text
//! {"session":"u1","t":0,"west":-122.36,"south":47.59,"east":-122.31,"north":47.62,"zoom":14.5}
//! ```
//!
//! - `session` (string): who is navigating. Each session is replayed with a fresh client
//!   (empty cache); sessions may be interleaved in the file.
//! - `t` (non-negative integer, milliseconds): when the map showed this viewport. Only
//!   differences within a session matter; `t` must not decrease within a session, and a
//!   session spans at most [`MAX_SESSION_MS`] (7 days).
//! - `west`, `south`, `east`, `north` (degrees) and `zoom` (fractional web-map zoom,
//!   0..=30): the viewport, checked like [`tilewarm::planner::Viewport::new`] (`west > east` crosses
//!   the antimeridian).
//! - Other fields (e.g. `"action":"pan"`) are ignored. Blank lines are skipped. A trace
//!   with no viewport at all is an error.
//!
//! See `sim/README.md` for the full description.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use tilewarm::planner::Viewport;

/// The longest a session may span, from its first `t` to its last: 7 days, in ms.
///
/// The simulator replays every millisecond of a session on its clock, and a view at rest
/// wakes and fetches again each time its items expire (every 5 minutes by default), so
/// the run's work grows with the span: a gap of years ran for hours, and a `t` near
/// `u64::MAX` overflowed the clock. A week is far beyond any map session.
pub const MAX_SESSION_MS: u64 = 7 * 24 * 3600 * 1000;

/// One line of a trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    pub session: String,
    pub t: u64,
    pub west: f64,
    pub south: f64,
    pub east: f64,
    pub north: f64,
    pub zoom: f64,
    /// What the user did (informational: `start`, `pan`, `zoom`, `jump`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

impl TraceEvent {
    /// The checked viewport.
    pub fn viewport(&self) -> Result<Viewport, tilewarm::planner::PlannerError> {
        Viewport::new(self.west, self.south, self.east, self.north, self.zoom)
    }
}

/// One user's viewports, in time order.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub name: String,
    /// (time in ms, viewport).
    pub events: Vec<(u64, Viewport)>,
    /// The `action` of each event (empty when the line had none), parallel to `events`.
    pub actions: Vec<String>,
}

/// A trace could not be read. Line numbers start at 1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    #[error("line {line}: {message}")]
    BadLine { line: usize, message: String },
    #[error("reading the trace failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the trace holds no viewport (it is empty or only blank lines); expected one JSON \
         object per line: {{\"session\",\"t\",\"west\",\"south\",\"east\",\"north\",\"zoom\"}}"
    )]
    Empty,
}

fn bad(line: usize, message: impl Into<String>) -> TraceError {
    TraceError::BadLine {
        line,
        message: message.into(),
    }
}

/// Parses a JSON-lines trace into sessions (in order of first appearance).
pub fn parse<R: BufRead>(reader: R) -> Result<Vec<Session>, TraceError> {
    let mut sessions: Vec<Session> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let ev: TraceEvent = serde_json::from_str(&line).map_err(|e| {
            bad(
                line_no,
                format!(
                    "not a trace event ({e}); expected {{\"session\",\"t\",\"west\",\"south\",\"east\",\"north\",\"zoom\"}}"
                ),
            )
        })?;
        let vp = ev
            .viewport()
            .map_err(|e| bad(line_no, format!("session {:?}: {e}", ev.session)))?;
        let k = *index.entry(ev.session.clone()).or_insert_with(|| {
            sessions.push(Session {
                name: ev.session.clone(),
                events: Vec::new(),
                actions: Vec::new(),
            });
            sessions.len() - 1
        });
        let s = &mut sessions[k];
        if let Some(&(prev, _)) = s.events.last() {
            if ev.t < prev {
                return Err(bad(
                    line_no,
                    format!(
                        "session {:?}: t {} is before the previous event's t {prev}; t must not decrease within a session",
                        ev.session, ev.t
                    ),
                ));
            }
        }
        if let Some(&(first, _)) = s.events.first() {
            if ev.t - first > MAX_SESSION_MS {
                return Err(bad(
                    line_no,
                    format!(
                        "session {:?}: t {} is {} ms after the session's first t {first}; a session spans at most {MAX_SESSION_MS} ms (7 days)",
                        ev.session,
                        ev.t,
                        ev.t - first
                    ),
                ));
            }
        }
        s.events.push((ev.t, vp));
        s.actions.push(ev.action.unwrap_or_default());
    }
    if sessions.is_empty() {
        return Err(TraceError::Empty);
    }
    Ok(sessions)
}

/// Writes events as JSON lines.
pub fn write<W: Write>(mut out: W, events: &[TraceEvent]) -> std::io::Result<()> {
    for ev in events {
        serde_json::to_writer(&mut out, ev)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sessions_in_order_and_ignores_extra_fields() {
        let text = r#"{"session":"a","t":0,"west":-122.4,"south":47.5,"east":-122.3,"north":47.6,"zoom":14}

{"session":"b","t":5,"west":-122.4,"south":47.5,"east":-122.3,"north":47.6,"zoom":14.5,"action":"pan"}
{"session":"a","t":10,"west":-122.3,"south":47.5,"east":-122.2,"north":47.6,"zoom":14,"extra":1}
"#;
        let s = parse(text.as_bytes()).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "a");
        assert_eq!(s[0].events.len(), 2);
        assert_eq!(s[0].events[1].0, 10);
        assert_eq!(s[1].events[0].1.zoom, 14.5);
    }

    fn err(text: &str) -> String {
        parse(text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn bad_lines_name_the_line_and_the_problem() {
        let ok = r#"{"session":"a","t":0,"west":-122.4,"south":47.5,"east":-122.3,"north":47.6,"zoom":14}"#;
        let e = err(&format!("{ok}\nnot json\n"));
        assert!(e.starts_with("line 2: not a trace event"), "{e}");
        let e = err(&format!(
            "{ok}\n{ok}\n{}\n",
            r#"{"session":"a","t":1,"west":-122.4,"south":47.5,"east":-122.3,"north":47.6}"#
        ));
        assert!(e.starts_with("line 3:") && e.contains("zoom"), "{e}");
        let e = err(
            r#"{"session":"a","t":0,"west":-122.4,"south":47.7,"east":-122.3,"north":47.6,"zoom":14}"#,
        );
        assert!(
            e.starts_with("line 1: session \"a\": invalid viewport"),
            "{e}"
        );
        let e = err(
            r#"{"session":"a","t":0,"west":-122.4,"south":47.5,"east":-122.3,"north":47.6,"zoom":31}"#,
        );
        assert!(e.contains("zoom must be a finite number in 0..=30"), "{e}");
        let e = err(&format!(
            "{}\n{}\n",
            r#"{"session":"a","t":9,"west":-122.4,"south":47.5,"east":-122.3,"north":47.6,"zoom":14}"#,
            r#"{"session":"a","t":3,"west":-122.4,"south":47.5,"east":-122.3,"north":47.6,"zoom":14}"#
        ));
        assert!(e.starts_with("line 2: session \"a\": t 3 is before"), "{e}");
        let e = err(
            r#"{"session":"a","t":-1,"west":-122.4,"south":47.5,"east":-122.3,"north":47.6,"zoom":14}"#,
        );
        assert!(e.starts_with("line 1: not a trace event"), "{e}");
    }

    #[test]
    fn an_empty_trace_is_an_error() {
        for text in ["", "\n", "  \n\n"] {
            let e = err(text);
            assert!(e.starts_with("the trace holds no viewport"), "{e}");
        }
    }

    #[test]
    fn a_session_spans_at_most_a_week() {
        let line = |t: u64| {
            format!(
                r#"{{"session":"a","t":{t},"west":-122.4,"south":47.5,"east":-122.3,"north":47.6,"zoom":14}}"#
            )
        };
        // A week exactly is fine; a millisecond more is not, nor a t near u64::MAX (it
        // overflowed the simulator's clock).
        let week = format!("{}\n{}\n", line(5), line(5 + MAX_SESSION_MS));
        assert_eq!(parse(week.as_bytes()).unwrap()[0].events.len(), 2);
        let e = err(&format!("{}\n{}\n", line(5), line(6 + MAX_SESSION_MS)));
        assert!(
            e.starts_with("line 2: session \"a\": t 604800006 is 604800001 ms after"),
            "{e}"
        );
        assert!(e.contains("at most 604800000 ms (7 days)"), "{e}");
        let e = err(&format!("{}\n{}\n", line(0), line(u64::MAX)));
        assert!(e.starts_with("line 2:"), "{e}");
    }

    #[test]
    fn write_then_parse_round_trips() {
        let ev = TraceEvent {
            session: "s".into(),
            t: 42,
            west: -122.41,
            south: 47.51,
            east: -122.31,
            north: 47.61,
            zoom: 14.25,
            action: Some("pan".into()),
        };
        let mut buf = Vec::new();
        write(&mut buf, std::slice::from_ref(&ev)).unwrap();
        let s = parse(buf.as_slice()).unwrap();
        assert_eq!(s[0].events[0].0, 42);
        assert_eq!(s[0].events[0].1, ev.viewport().unwrap());
    }
}
