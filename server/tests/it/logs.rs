//! What the server writes to its log: never a secret it was given (issue 15).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{config, redis_available, Config};

/// A `MakeWriter` that keeps everything written, for reading back.
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Captures what this thread logs at `level` and above, until the guard is dropped (a
/// current-thread runtime's tasks log on it).
pub(crate) fn captured_on_this_thread(
    level: tracing::Level,
) -> (Captured, tracing::subscriber::DefaultGuard) {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_max_level(level)
        .with_ansi(false)
        .finish();
    (log, tracing::subscriber::set_default(subscriber))
}

const PASSWORD: &str = "hunter2-not-for-logs";

/// A password-protected `redis-server` on a free port, up and answering AUTH. The caller
/// kills and waits for the child (clippy cannot see that across the return).
#[allow(clippy::zombie_processes)]
fn redis_with_password() -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tilewarm_server::tier::loopback_redis_command(port)
        .args(["--requirepass", PASSWORD])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let auth = format!("AUTH {PASSWORD}\r\n");
            if s.write_all(auth.as_bytes()).is_ok() {
                let mut buf = [0u8; 16];
                if s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+OK")) {
                    return (child, port);
                }
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server did not come up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// Current-thread runtime: the scoped subscriber sees every event of the server's start.
#[tokio::test]
async fn the_redis_password_never_reaches_the_log() {
    if !redis_available() {
        return;
    }
    let (mut redis, port) = redis_with_password();
    let (log, guard) = captured_on_this_thread(tracing::Level::TRACE);
    let s = crate::common::server(Config {
        redis: Some(format!("redis://:{PASSWORD}@127.0.0.1:{port}/0")),
        ..config()
    })
    .await;
    s.shutdown().await;
    drop(guard);
    let _ = redis.kill();
    let _ = redis.wait();
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    // The line that names the Redis URL was written (with the password masked) …
    assert!(
        text.contains("cache tier: redis") && text.contains(":***@127.0.0.1"),
        "log: {text}"
    );
    // … and the password appears nowhere.
    assert!(
        !text.contains(PASSWORD),
        "the password is in the log: {text}"
    );
}

/// A PostGIS origin the server cannot reach at start (down, a wrong port, password or
/// database) is said at warn once, not only at debug: before, the log said "origin ready"
/// and nothing else while every miss was a 502 and no change reached the tier. Later
/// failures of the same outage stay at debug. Fails with the first failure at debug.
#[tokio::test]
async fn a_postgis_change_feed_that_cannot_connect_is_a_warning_once() {
    // A loopback port nothing listens on: every connect is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (log, guard) = captured_on_this_thread(tracing::Level::WARN);
    let s = crate::common::server(Config {
        origin: Some(format!("postgres://tw@127.0.0.1:{port}/geo")),
        ..config()
    })
    .await;
    let said = "change feed: cannot connect to the database";
    let count = || {
        String::from_utf8_lossy(&log.0.lock().unwrap())
            .matches(said)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while count() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Several more attempts (100 ms, doubling to 2 s between them) fail meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.shutdown().await;
    drop(guard);
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert_eq!(text.matches(said).count(), 1, "log: {text}");
    // With the driver's cause, not only its kind ("error connecting to server").
    assert!(text.contains("refused"), "log: {text}");
}
