//! A TCP relay that can stop forwarding, to make a peer look slow without breaking the
//! connection: paused, it neither reads nor writes (bytes already read wait in it), the
//! sockets stay open and the kernels keep acknowledging, as with a database in an I/O
//! stall or a network hiccup of a few seconds.

use std::net::SocketAddr;
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
}

impl PauseRelay {
    pub async fn start(target: SocketAddr) -> PauseRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (pause, _) = watch::channel(Pause::No);
        let rx = pause.subscribe();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, rx.clone(), true));
                tokio::spawn(pipe(sr, cw, rx.clone(), false));
            }
        });
        PauseRelay {
            addr,
            pause,
            accept,
        }
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
