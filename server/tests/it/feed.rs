//! A follower of a server's change feed (`GET /v1/changes`) over HTTP, read with the
//! server's own event-stream reader (`tilewarm_server::sse`), for the tests of the feed and
//! of the servers that follow one.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tilewarm_server::Server;

/// An open `GET /v1/changes`.
pub struct Feed {
    pub body: Incoming,
    /// The server's own event-stream reader (`tilewarm_server::sse`).
    parser: tilewarm_server::sse::Parser,
    read: std::collections::VecDeque<tilewarm_server::sse::Message>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub event: String,
    pub id: String,
    pub data: serde_json::Value,
}

impl Feed {
    pub async fn open(s: &Server, token: Option<&str>, last_id: Option<&str>) -> Feed {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut req = hyper::Request::get(format!("{}/v1/changes", s.url()));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = client
            .request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Feed {
            body: resp.into_body(),
            parser: tilewarm_server::sse::Parser::new(1 << 20),
            read: Default::default(),
        }
    }

    /// The next event (comments skipped; `id` is the stream's last event id, as a browser
    /// keeps it); panics after 10 s.
    pub async fn next(&mut self) -> Sse {
        loop {
            if let Some(m) = self.read.pop_front() {
                let data = serde_json::from_str(&m.data).unwrap();
                return Sse {
                    event: m.event,
                    id: m.id.unwrap_or_default(),
                    data,
                };
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("an event within 10 s")
                .expect("the stream is open")
                .unwrap();
            if let Ok(d) = frame.into_data() {
                let mut out = Vec::new();
                self.parser.push(&d, &mut out).unwrap();
                self.read.extend(out);
            }
        }
    }

    /// Events until an `invalidate` whose data satisfies `f` (at most 10 s each).
    pub async fn until(&mut self, f: impl Fn(&serde_json::Value) -> bool) -> Sse {
        loop {
            let e = self.next().await;
            if e.event == "invalidate" && f(&e.data) {
                return e;
            }
        }
    }
}
