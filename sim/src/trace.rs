//! Viewport traces: one JSON object per line.
//!
//! ```text
//! {"session":"u1","t":0,"west":-122.36,"south":47.59,"east":-122.31,"north":47.62,"zoom":14.5}
//! ```
//!
//! - `session` (string): who is navigating. Each session is replayed with a fresh client
//!   (empty cache); sessions may be interleaved in the file.
//! - `t` (non-negative integer, milliseconds): when the map showed this viewport. Only
//!   differences within a session matter; `t` must not decrease within a session.
//! - `west`, `south`, `east`, `north` (degrees) and `zoom` (fractional web-map zoom,
//!   0..=30): the viewport, checked like [`tilewarm::planner::Viewport::new`] (`west > east` crosses
//!   the antimeridian).
//! - Other fields (e.g. `"action":"pan"`) are ignored. Blank lines are skipped.
//!
//! See `sim/README.md` for the full description.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use tilewarm::planner::Viewport;

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
        s.events.push((ev.t, vp));
        s.actions.push(ev.action.unwrap_or_default());
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
