//! A connection's IO with a deadline on writes that make no progress (`--write-timeout-ms`).
//!
//! hyper's HTTP/1 server has a timer for reading a request's headers and none for writing
//! the answer: a client that sends requests (pipelined, or one after another on a
//! kept-alive connection) and never reads the answers leaves the write pending forever,
//! and with it the connection, its `--max-connections` permit and the unsent response in
//! memory. [`WriteTimeout`] wraps the socket: a write (or flush) that stays pending, the
//! kernel's send buffer full and the client taking nothing, for longer than the limit
//! fails with [`std::io::ErrorKind::TimedOut`], which ends the connection. Any byte the
//! socket takes restarts the clock, so a slow reader is served at its pace and an idle
//! connection (a change feed between events, a kept-alive one between requests) has no
//! write pending and so no deadline.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `inner` whose writes and flushes fail after `limit` without progress (module docs).
pub struct WriteTimeout<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write is pending: when it fires, the write fails.
    stall: Pin<Box<Sleep>>,
    armed: bool,
}

impl<S> WriteTimeout<S> {
    /// Wraps `inner`; `limit` is how long a write may make no progress.
    pub fn new(inner: S, limit: Duration) -> WriteTimeout<S> {
        WriteTimeout {
            inner,
            limit,
            stall: Box::pin(tokio::time::sleep(limit)),
            armed: false,
        }
    }

    /// `poll` is what the socket said: progress disarms the deadline, pending arms it
    /// (once per stall) and fails once it has passed.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.armed = false;
            return poll;
        }
        if !self.armed {
            self.armed = true;
            self.stall.as_mut().reset(Instant::now() + self.limit);
        }
        match self.stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took no byte of the answer for {} ms (--write-timeout-ms)",
                    self.limit.as_millis()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A pipe whose reader takes nothing: the writer fills its buffer and then fails after
    /// the limit instead of waiting forever.
    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_after_the_limit() {
        let (near, _far) = tokio::io::duplex(64);
        let mut w = WriteTimeout::new(near, Duration::from_secs(5));
        let started = Instant::now();
        let e = w.write_all(&[7u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("--write-timeout-ms"), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    /// A reader that drains 64 bytes every 4 s: each stall is shorter than the 5 s limit,
    /// so the 1 KiB write finishes after 64 s, far past the limit.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_is_served_at_its_pace() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut w = WriteTimeout::new(near, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let (mut got, mut buf) = (0, [0u8; 64]);
            while got < 1024 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                got += far.read(&mut buf).await.unwrap();
            }
            got
        });
        let started = Instant::now();
        w.write_all(&[7u8; 1024]).await.unwrap();
        w.flush().await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(60));
        assert_eq!(reader.await.unwrap(), 1024);
    }
}
