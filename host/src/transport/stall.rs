//! Cuts off connections whose peer stopped reading, or that the server ends from elsewhere.
//!
//! A client that stops reading fills its TCP window; the engine's websocket writer then waits
//! in a write that never completes, holding the socket's queue, so neither the send buffer
//! bound nor the heartbeat can end the session. [`StallGuard`] wraps each accepted stream: a
//! write that makes no progress for `REALTIME_WRITE_TIMEOUT` fails, and so does every later
//! read and write, which makes the engine close the session (and the link clean up) while the
//! rest of the server carries on.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The peer address of an accepted connection (in every request's extensions as axum's
/// `ConnectInfo<PeerAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Ends a connection from elsewhere: once killed, every read and write of its stream fails,
/// which makes the engine close the session (in every request's extensions).
#[derive(Clone, Default)]
pub struct KillSwitch(Arc<KillInner>);

#[derive(Default)]
struct KillInner {
    killed: AtomicBool,
    reader: AtomicWaker,
}

impl KillSwitch {
    /// Ends the connection.
    pub fn kill(&self) {
        self.0.killed.store(true, Ordering::Release);
        self.0.reader.wake();
    }

    fn killed(&self) -> bool {
        self.0.killed.load(Ordering::Acquire)
    }
}

/// A TCP stream whose writes fail after making no progress for the timeout.
pub struct StallGuard {
    inner: TcpStream,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    stalled: bool,
    dead: bool,
    reader: Option<Waker>,
    kill: KillSwitch,
}

impl StallGuard {
    /// Wraps an accepted stream; `kill` ends it from elsewhere.
    pub fn new(inner: TcpStream, timeout: Duration, kill: KillSwitch) -> Self {
        StallGuard {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            stalled: false,
            dead: false,
            reader: None,
            kill,
        }
    }

    /// Whether the stream is dead (stalled too long, or killed).
    fn is_dead(&mut self) -> bool {
        if !self.dead && self.kill.killed() {
            self.dead = true;
        }
        self.dead
    }

    fn stalled_error() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading")
    }

    /// Turns a pending write into an error once the stall lasted the whole timeout.
    fn on_pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.stalled {
            self.stalled = true;
            let deadline = Instant::now() + self.timeout;
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.dead = true;
                if let Some(w) = self.reader.take() {
                    w.wake();
                }
                tracing::info!("closing a connection whose peer stopped reading");
                Poll::Ready(Err(Self::stalled_error()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.kill.0.reader.register(cx.waker());
        if this.is_dead() {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {
                this.reader = Some(cx.waker().clone());
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_dead() {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.on_pending(cx),
            ready => {
                this.stalled = false;
                ready
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_dead() {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.on_pending(cx),
            ready => {
                this.stalled = false;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_dead() {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.on_pending(cx),
            ready => {
                this.stalled = false;
                ready
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_dead() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
