//! Accepting connections within bounds: how many, how long one may stay silent, and what
//! an accept error costs.
//!
//! Without these, any client locks others out: connections that never send a byte stay
//! open forever, and at the process's open-file limit every `accept` fails at once, which
//! an accept loop that retries immediately turns into a busy spin. So:
//! - at most `limits.max_connections` connections are open; one more is accepted and
//!   closed at once (the client sees the connection close, not a hang in the backlog);
//! - a connection that sends nothing within `limits.connection_preface_timeout` of its
//!   accept (no HTTP/2 preface, no TLS hello) is closed;
//! - when the server starts draining, a connection still silent closes at once, and any
//!   other must show life within [`DRAIN_SILENCE`] (HTTP/2's graceful shutdown pings every
//!   connection, and a live client answers at once): a connection that went quiet after
//!   its preface, or a peer that vanished, does not hold the drain up for the whole
//!   `shutdown_grace_period`, while calls in flight on live connections finish;
//! - an accept error (EMFILE, ENFILE, ENOBUFS...) is logged and the loop backs off,
//!   doubling from 10 ms to 1 s while errors repeat;
//! - HTTP/2 keepalive pings (set on the server in [`crate::wire::server`]) close connections
//!   whose peer is gone. A connection that completed its preface and answers pings may
//!   stay idle: `max_connections` bounds how many.
//!
//! The wrapper is ours (not a crate) because it needs the permit, the preface timer and
//! the drain signal on the same I/O object that tonic serves; each piece is a few lines.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;

/// The bounds in force (from `limits`; read at start).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub preface_timeout: Duration,
}

/// How long a connection may stay silent once the server drains (see the module docs).
pub const DRAIN_SILENCE: Duration = Duration::from_secs(2);

/// An accepted TCP connection that holds its place among the open ones, and fails its
/// reads when it stays silent past the preface timeout, or silent while the server drains.
pub struct Connection {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until the first byte arrives: its deadline.
    preface: Option<Pin<Box<Sleep>>>,
    /// Until the server drains: the signal.
    draining: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Once it drains, until the connection shows life: the deadline.
    drain_deadline: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.preface = None;
                self.drain_deadline = None;
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(other) => return Poll::Ready(other),
            Poll::Pending => {}
        }
        if let Some(deadline) = &mut self.preface
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client sent nothing within limits.connection_preface_timeout",
            )));
        }
        if let Some(draining) = &mut self.draining
            && draining.as_mut().poll(cx).is_ready()
        {
            self.draining = None;
            if self.preface.is_some() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the server is draining")));
            }
            let mut deadline = Box::pin(tokio::time::sleep(DRAIN_SILENCE));
            // Registers the timer with this task.
            let _ = deadline.as_mut().poll(cx);
            self.drain_deadline = Some(deadline);
        }
        if let Some(deadline) = &mut self.drain_deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stayed silent while the server drained",
            )));
        }
        Poll::Pending
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The next connection on `listener`. An accept error (the open-file limit reached, a
/// connection reset before it was accepted) backs off, from 10 ms doubling to 1 s, instead
/// of spinning; `backoff` carries the delay from one call to the next (zero after a
/// success). Cancel-safe: it may be dropped between its awaits.
pub async fn accept_backing_off(listener: &TcpListener, backoff: &mut Duration) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                *backoff = Duration::ZERO;
                return accepted;
            }
            Err(e) => {
                *backoff = (*backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::time::sleep(*backoff).await;
            }
        }
    }
}

/// Accepts connections on `listener` within `limits` (see the module docs) until the
/// returned stream is dropped. `draining` turns true when the server starts draining.
pub fn accept(
    listener: TcpListener,
    limits: ConnectionLimits,
    draining: watch::Receiver<bool>,
) -> impl Stream<Item = io::Result<Connection>> {
    let (tx, rx) = mpsc::channel(64);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        let mut backoff = Duration::ZERO;
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = accept_backing_off(&listener, &mut backoff) => accepted,
                _ = tx.closed() => return,
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max = limits.max_connections, "connection refused: limits.max_connections are open");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let mut drain = draining.clone();
            let drained: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                let _ = drain.wait_for(|d| *d).await;
            });
            let connection = Connection {
                inner: tcp,
                _permit: permit,
                preface: Some(Box::pin(tokio::time::sleep(limits.preface_timeout))),
                draining: Some(drained),
                drain_deadline: None,
            };
            if tx.send(Ok(connection)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
