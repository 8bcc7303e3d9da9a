//! Loopback load-generation helpers shared by the load tools in `src/bin/` (`tw-load`,
//! `tw-soak`, `tw-overload`, `tw-cluster-load`, `tw-pgbench`): child processes killed on
//! drop, free ports, the deterministic 16-tile batches, and a small HTTP client.

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tilewarm::origin::Origin;
use tilewarm::protocol::RawData;
use tilewarm::tile::TileId;

/// The HTTP client the load generators use.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new HTTP/1 client.
pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Proc {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something listens on `port`; panics after `within`.
pub fn wait_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `bin` as `tilewarm-server` on `port` (log level warn, `/metrics` on the same
/// port for the harness to read, no per-caller rate limit since one load generator stands
/// in for many callers, `extra` flags) and waits until it listens.
pub fn start_server(bin: &Path, port: u16, extra: &[String]) -> Proc {
    let child = Command::new(bin)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            "warn",
            "--metrics-public",
            "--caller-rate",
            "0",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let p = Proc(child);
    wait_port(port, Duration::from_secs(60));
    p
}

/// Server flags for a throughput benchmark: a fixed 64 batch slots (`--max-in-flight`'s
/// default), so every one of the benchmark's clients is admitted and the tier's or
/// origin's speed is measured. The default adaptive limit settles at a few slots on a
/// 2-core machine and refuses some of 16 closed-loop clients; how the server sheds is
/// `tw-overload`'s measurement.
pub fn throughput_flags() -> [String; 2] {
    ["--in-flight-limit".into(), "fixed".into()]
}

/// The `k`th cold block: 4x4 zoom-14 tiles no earlier request of `tw-soak` or `tw-overload`
/// (nor the server's warm-up ring, which reaches one tile out) has touched, so every one is
/// an origin call (`tw-overload` keeps its phases apart with an offset of `k`).
pub fn cold_block(k: usize) -> Vec<TileId> {
    let per_row = (1usize << 14) / 8;
    let (x0, y0) = ((k % per_row) * 8, 1024 + (k / per_row % 1024) * 8);
    (0..16)
        .filter_map(|j| TileId::new(14, (x0 + j % 4) as u32, (y0 + j / 4) as u32).ok())
        .collect()
}

/// The resident memory of process `pid` in KiB (`VmRSS` in `/proc/<pid>/status`); None
/// where it cannot be read (not Linux, the process gone).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The `p` quantile (0 to 1) of `sorted` (ascending), the nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The body of a request for `tiles` at `public`, no ids: what the load generators send.
pub fn public_body(tiles: &[TileId]) -> Bytes {
    let request = tilewarm::protocol::BatchRequest {
        tiles: tiles.to_vec(),
        ids: vec![],
        access: tilewarm::access::Access::Public,
    };
    Bytes::from(request.to_json())
}

/// `n` 4x4 blocks of data tiles (zoom 14), each around a different occupied tile
/// (deterministic).
pub fn plan_batches(origin: &Origin<RawData>, n: usize) -> Vec<Vec<TileId>> {
    let occupied: Vec<TileId> = origin
        .occupied_tiles(14)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let step = (occupied.len() / n.max(1)).max(1);
    occupied
        .iter()
        .step_by(step)
        .take(n)
        .map(|&t| {
            let mut block = Vec::with_capacity(16);
            for dy in -1..3 {
                for dx in -1..3 {
                    if let Some(b) = t.offset(dx, dy) {
                        block.push(b);
                    }
                }
            }
            block
        })
        .collect()
}

/// POSTs a batch body to `url`: the status and, for a 200, the number of items; `Err`
/// for a transport failure or an unreadable body.
pub async fn post_batch(
    client: &HttpClient,
    url: &hyper::Uri,
    body: Bytes,
) -> Result<(u16, u64), String> {
    let req = hyper::Request::post(url.clone())
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let (status, bytes) = send(client, req).await?;
    if status != 200 {
        return Ok((status, 0));
    }
    Ok((status, count_items(&bytes)?))
}

/// The number of items in a batch answer: the elements of the top-level `items` array,
/// found by following the JSON's structure (strings skipped, brackets counted) without
/// parsing any value. The load generators run on the cores they measure; serde_json
/// skipping the whole answer (`IgnoredAny`, 0.8 ms for a 16-tile answer of 320 KB) cost
/// about what the server spends making it, a tax the raw-`MGET` peer never pays. This scan
/// costs about 2.5x less, and still refuses an answer whose brackets or strings do not
/// close, or that has no `items` array.
pub fn count_items(json: &[u8]) -> Result<u64, String> {
    let (mut depth, mut i) = (0usize, 0usize);
    // The last string seen directly inside the top-level object: the key before a value.
    let mut key: &[u8] = b"";
    // The depth of the items array's elements, once it opened.
    let mut items_at: Option<usize> = None;
    let mut count = 0u64;
    while let Some(&b) = json.get(i) {
        match b {
            b'"' => {
                let start = i + 1;
                i = start;
                loop {
                    match json.get(i) {
                        None => return Err("the answer ends inside a string".into()),
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                if depth == 1 {
                    key = &json[start..i];
                }
            }
            b'{' | b'[' => {
                if b == b'{' && items_at == Some(depth) {
                    count += 1;
                }
                if b == b'[' && depth == 1 && key == b"items" {
                    items_at = Some(depth + 1);
                }
                depth += 1;
            }
            b'}' | b']' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("the answer closes a bracket it never opened")?;
            }
            _ => {}
        }
        i += 1;
    }
    match (depth, items_at) {
        (0, Some(_)) => Ok(count),
        (0, None) => Err("the answer has no items array".into()),
        _ => Err("the answer's brackets do not close".into()),
    }
}

/// GETs `url`'s body as text (for `/healthz` and `/metrics`).
pub async fn get_text(client: &HttpClient, url: &str) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let req = hyper::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let (_, bytes) = send(client, req).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Sends `req` and reads the whole answer: its status and body.
async fn send(
    client: &HttpClient,
    req: hyper::Request<Full<Bytes>>,
) -> Result<(u16, Bytes), String> {
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, bytes))
}

#[cfg(test)]
mod tests {
    use super::count_items;

    #[test]
    fn counts_the_items_array_as_serde_does() {
        for json in [
            r#"{"access":"public","tiles":[],"items":[],"missing":[]}"#,
            r#"{"tiles":[{"tile":"14/1/2","ids":["a","b"],"ttl":3}],"items":[{"id":"a","data":{"items":[{},{}]}},{"id":"b"}],"missing":["c"]}"#,
            r#"{"items":[{"id":"a\"{[","data":"]}\\"},{"id":"]"}],"error":{"items":[{}]}}"#,
            r#" { "items" : [ { } , { "x" : [ { } ] } ] } "#,
        ] {
            #[derive(serde::Deserialize)]
            struct Count {
                items: Vec<serde::de::IgnoredAny>,
            }
            let want: Count = serde_json::from_str(json).unwrap();
            assert_eq!(
                count_items(json.as_bytes()),
                Ok(want.items.len() as u64),
                "{json}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_whole_answer() {
        for json in [
            r#"{"items":[{"id":"a"}"#,
            r#"{"items":[{"id":"a}]}"#,
            r#"{"tiles":[]}"#,
            r#"]{"items":[]}"#,
            "",
        ] {
            assert!(count_items(json.as_bytes()).is_err(), "{json}");
        }
    }
}
