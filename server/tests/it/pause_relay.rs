//! A TCP relay that can stop forwarding, to make a peer look slow without breaking the
//! connection: paused, it forwards nothing (bytes already read wait in it), the sockets
//! stay open and the kernels keep acknowledging, as with a database in an I/O stall or a
//! network hiccup of a few seconds. What a server sends while held back is read all the
//! same, kept and counted ([`PauseRelay::held_from_server`]: a test knows the database sent
//! it), and passed on, its close after it, once let through; neither end can tell.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the relay holds back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// Nothing: everything is forwarded.
    No,
    /// What the clients send (a query waits; what the server sends still arrives).
    ToServer,
    /// Both ways.
    Both,
}

impl Pause {
    fn holds(self, to_server: bool) -> bool {
        match self {
            Pause::No => false,
            Pause::ToServer => to_server,
            Pause::Both => true,
        }
    }
}

/// Forwards every connection made to [`PauseRelay::addr`] to `target`; stops on drop.
pub struct PauseRelay {
    pub addr: SocketAddr,
    pause: watch::Sender<Pause>,
    accept: tokio::task::JoinHandle<()>,
    /// Bytes the servers sent while held back.
    held_from_server: Arc<AtomicUsize>,
}

impl PauseRelay {
    pub async fn start(target: SocketAddr) -> PauseRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (pause, _) = watch::channel(Pause::No);
        let rx = pause.subscribe();
        let held_from_server = Arc::new(AtomicUsize::new(0));
        let held = Arc::clone(&held_from_server);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, rx.clone(), true));
                tokio::spawn(from_server(sr, cw, rx.clone(), Arc::clone(&held)));
            }
        });
        PauseRelay {
            addr,
            pause,
            accept,
            held_from_server,
        }
    }

    /// Bytes the servers sent, on any connection, while held back: what a database sent
    /// before it went away, say.
    pub fn held_from_server(&self) -> usize {
        self.held_from_server.load(Relaxed)
    }

    /// Holds back what `p` says, on every connection, open or made later.
    pub fn set(&self, p: Pause) {
        self.pause.send_replace(p);
    }
}

impl Drop for PauseRelay {
    fn drop(&mut self) {
        self.accept.abort();
        // Open connections go on, unpaused, until either end closes.
        self.pause.send_replace(Pause::No);
    }
}

async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut pause: watch::Receiver<Pause>,
    to_server: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Before reading and again before writing: bytes read just before a pause wait too.
        let _ = pause.wait_for(|p| !p.holds(to_server)).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let _ = pause.wait_for(|p| !p.holds(to_server)).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// What a server sends, passed on to its client while `pause` lets it; held back, it is
/// read all the same (counted in `held`) and kept, then passed on, the close after it.
async fn from_server(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut pause: watch::Receiver<Pause>,
    held: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut kept = Vec::new();
    let (mut open, mut live) = (true, true);
    loop {
        if !pause.borrow_and_update().holds(false) && !kept.is_empty() {
            if to.write_all(&kept).await.is_err() {
                return;
            }
            kept.clear();
        }
        // The close waits as the bytes do.
        if !open && kept.is_empty() && !pause.borrow().holds(false) {
            break;
        }
        tokio::select! {
            read = from.read(&mut buf), if open => match read {
                Ok(0) | Err(_) => open = false,
                Ok(n) => {
                    if pause.borrow().holds(false) {
                        held.fetch_add(n, Relaxed);
                    }
                    kept.extend_from_slice(&buf[..n]);
                }
            },
            // The relay gone: it let everything through first (`Drop`).
            changed = pause.changed(), if live => live = changed.is_ok(),
            else => break,
        }
    }
    let _ = to.shutdown().await;
}
