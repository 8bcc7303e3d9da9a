//! Reading a server-sent event stream (the WHATWG `text/event-stream` format), for the
//! server's side of another tilewarm-server's `GET /v1/changes`
//! ([`crate::origin::upstream_changes`]) and the tests that follow a feed. The server's
//! own stream is written by axum's `Sse` ([`crate::stream`]); the edge reads feeds with its
//! own JS reader (edge/src).
//!
//! Bytes go in as they arrive, in chunks cut anywhere ([`Parser::push`]); whole events come
//! out. Lines end with LF, CR or CRLF (a CRLF cut between two chunks included); a line
//! starting with `:` is a comment (a keep-alive); `event`, `data` and `id` are read,
//! `retry` and unknown fields are ignored (the follower chooses its own back-off); a blank
//! line dispatches the event, unless it had no `data` (the id still counts, as in a
//! browser). An `id` holding NUL is ignored; one longer than [`MAX_ID_BYTES`] is an error.
//!
//! **Memory is bounded**: a line longer than the parser's `max_bytes`, or an event whose
//! data adds up to more, is an error ([`SseError`]) before it is buffered, so a peer that
//! never sends a newline costs `max_bytes`, not an allocation as large as it likes. After
//! an error the stream cannot be trusted and should be dropped.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The `event` field, `message` when none was given.
    pub event: String,
    /// The `data` lines joined with `\n`.
    pub data: String,
    /// The stream's last event id when this event was dispatched (its own `id`, or the
    /// last one before it), `None` while none was sent.
    pub id: Option<String>,
}

/// Why a stream cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// A line longer than the bound, with no end in sight.
    #[error("a line of the event stream is longer than {max} bytes")]
    LineTooLong { max: usize },
    /// The data lines of one event add up to more than the bound.
    #[error("an event of the event stream holds more than {max} bytes of data")]
    EventTooLarge { max: usize },
    /// An `id` longer than [`MAX_ID_BYTES`].
    #[error("an event id of the event stream is longer than {MAX_ID_BYTES} bytes")]
    IdTooLong,
}

/// The longest event `id` read. Every dispatched event carries a copy of the last id, so an
/// id as long as a line would make a chunk of small events cost that much each; a change
/// stream's ids (`<ms>-<seq>`) are at most 41 bytes.
pub const MAX_ID_BYTES: usize = 256;

/// An incremental, bounded event-stream reader (module docs).
#[derive(Debug)]
pub struct Parser {
    max: usize,
    /// The line being read (no end seen yet).
    line: Vec<u8>,
    /// The last byte ended a line with CR: an LF right after it belongs to that end.
    after_cr: bool,
    /// Nothing read yet: a UTF-8 BOM is skipped.
    at_start: bool,
    event: String,
    data: String,
    /// Whether a `data` field was seen for the event being read.
    has_data: bool,
    last_id: Option<String>,
}

impl Parser {
    /// A reader whose lines and events are at most `max_bytes` long (at least 1).
    pub fn new(max_bytes: usize) -> Parser {
        Parser {
            max: max_bytes.max(1),
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            event: String::new(),
            data: String::new(),
            has_data: false,
            last_id: None,
        }
    }

    /// The stream's last event id so far (what `Last-Event-ID` resumes from).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Reads `bytes` (any part of the stream), appending each event they complete to
    /// `out`. An error leaves the events completed before it in `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Message>) -> Result<(), SseError> {
        if self.at_start && !bytes.is_empty() {
            // The BOM may itself arrive cut; compare what is there.
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            let seen = self.line.len() + bytes.len();
            let mut head = self.line.clone();
            head.extend_from_slice(&bytes[..bytes.len().min(3)]);
            if !BOM.starts_with(&head[..head.len().min(3)]) {
                self.at_start = false;
            } else if seen >= 3 {
                let take = 3 - self.line.len();
                self.line.clear();
                bytes = &bytes[take..];
                self.at_start = false;
            } else {
                self.line.extend_from_slice(bytes);
                return Ok(());
            }
        }
        while !bytes.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if bytes[0] == b'\n' {
                    bytes = &bytes[1..];
                    continue;
                }
            }
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(end) => {
                    if self.line.len() + end > self.max {
                        return Err(SseError::LineTooLong { max: self.max });
                    }
                    self.line.extend_from_slice(&bytes[..end]);
                    self.after_cr = bytes[end] == b'\r';
                    bytes = &bytes[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, out)?;
                }
                None => {
                    if self.line.len() + bytes.len() > self.max {
                        return Err(SseError::LineTooLong { max: self.max });
                    }
                    self.line.extend_from_slice(bytes);
                    bytes = &[];
                }
            }
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Message>) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // a comment
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"event" => self.event = value.into_owned(),
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max {
                    return Err(SseError::EventTooLarge { max: self.max });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"id" if value.len() > MAX_ID_BYTES => return Err(SseError::IdTooLong),
            b"id" if !value.contains('\0') => self.last_id = Some(value.into_owned()),
            _ => {} // retry, unknown fields: ignored
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<Message>) {
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        out.push(Message {
            event: if event.is_empty() {
                "message".into()
            } else {
                event
            },
            data,
            id: self.last_id.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_longer_than_the_bound_is_an_error_not_a_copy_per_event() {
        let mut p = Parser::new(1 << 20);
        let long = format!("id: {}\n", "7".repeat(MAX_ID_BYTES + 1));
        let mut out = Vec::new();
        let err = p.push(long.as_bytes(), &mut out).unwrap_err();
        assert!(matches!(err, SseError::IdTooLong), "{err}");
        let mut p = Parser::new(1 << 20);
        let ok = format!("id: {}\ndata: x\n\n", "7".repeat(MAX_ID_BYTES));
        assert_eq!(all(&mut p, &[ok.as_bytes()]).unwrap().len(), 1);
    }

    fn all(parser: &mut Parser, chunks: &[&[u8]]) -> Result<Vec<Message>, SseError> {
        let mut out = Vec::new();
        for c in chunks {
            parser.push(c, &mut out)?;
        }
        Ok(out)
    }

    fn msg(event: &str, data: &str, id: Option<&str>) -> Message {
        Message {
            event: event.into(),
            data: data.into(),
            id: id.map(Into::into),
        }
    }

    #[test]
    fn events_comments_and_ids_as_axum_writes_them() {
        let mut p = Parser::new(1024);
        let got = all(
            &mut p,
            &[b"event: ready\nid: 5-0\ndata: {}\n\n:\n\nevent: invalidate\nid: 6-0\ndata: {\"ids\":[\"a\"]}\n\n"],
        )
        .unwrap();
        assert_eq!(
            got,
            [
                msg("ready", "{}", Some("5-0")),
                msg("invalidate", "{\"ids\":[\"a\"]}", Some("6-0"))
            ]
        );
        assert_eq!(p.last_event_id(), Some("6-0"));
    }

    #[test]
    fn chunks_cut_anywhere_give_the_same_events() {
        let text: &[u8] =
            b"\xEF\xBB\xBFevent: reset\r\nid: 7-1\r\ndata: {\"reason\":\"gap\"}\r\n\r\ndata: a\rdata: b\r\r";
        let whole = all(&mut Parser::new(1024), &[text]).unwrap();
        assert_eq!(
            whole,
            [
                msg("reset", "{\"reason\":\"gap\"}", Some("7-1")),
                msg("message", "a\nb", Some("7-1"))
            ]
        );
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let got = all(
                    &mut Parser::new(1024),
                    &[&text[..cut], &text[cut..cut2], &text[cut2..]],
                )
                .unwrap();
                assert_eq!(got, whole, "cut at {cut} and {cut2}");
            }
        }
    }

    #[test]
    fn an_event_without_data_is_not_dispatched_but_its_id_counts() {
        let mut p = Parser::new(64);
        let got = all(
            &mut p,
            &[b"event: x\nid: 9-0\n\nid: bad\0id\nretry: 10\nfoo\n\n"],
        )
        .unwrap();
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(p.last_event_id(), Some("9-0"));
    }

    #[test]
    fn a_line_or_event_past_the_bound_is_an_error_not_an_allocation() {
        let mut p = Parser::new(16);
        // No newline ever: refused once the line passes the bound, across chunks.
        let mut out = Vec::new();
        p.push(b"data: 0123456", &mut out).unwrap();
        assert_eq!(
            p.push(b"789abcdef", &mut out),
            Err(SseError::LineTooLong { max: 16 })
        );
        assert!(p.line.capacity() <= 64, "{}", p.line.capacity());
        // Short lines adding up to a large event.
        let mut p = Parser::new(16);
        assert_eq!(
            all(&mut p, &[b"data: 01234567\ndata: 89abcdef\n"]),
            Err(SseError::EventTooLarge { max: 16 })
        );
        // Exactly the bound is fine.
        let mut p = Parser::new(16);
        let got = all(&mut p, &[b"data:0123456789a\n\n"]).unwrap();
        assert_eq!(got, [msg("message", "0123456789a", None)]);
    }
}
