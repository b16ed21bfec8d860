//! The sending side of the connection to one peer: dial, TLS handshake (verifying that the
//! server is `strstore:node:<peer>`), hello, then batches of messages until the connection
//! breaks.

use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use strstore_protocol::codec::encode_frame;
use strstore_protocol::{Codec, CodecError, NodeId, PeerFrame, PeerHello, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;
use tracing::{debug, info, warn};

use super::queue::{carries_snapshot, Queued};
use crate::tls::identity::node_server_name;
use crate::tls::{sniff, TlsState, HANDSHAKE_TIMEOUT};

/// First and largest pause between connection attempts to a peer that is down.
const RECONNECT_MIN: Duration = Duration::from_millis(20);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Largest pause after a refusal: a refused node stays refused until someone fixes its
/// certificates, and every attempt costs the refusing node a handshake and a log line.
const REFUSED_MAX: Duration = Duration::from_secs(5);
/// A connection that lasted this long was healthy: after it breaks, reconnect at once. With
/// TLS 1.3 the dialler's handshake completes before the acceptor has checked its certificate,
/// so "connected" alone says nothing about being accepted.
const HEALTHY_AFTER: Duration = Duration::from_secs(2);

/// Why a connection attempt or a connection ended.
enum LinkEnd {
    /// The peer cannot be reached (TCP), or the connection broke after it was up.
    Down(String),
    /// The peer, or our check of it, refused the connection: a configuration or security
    /// problem that retrying will not fix by itself. Logged at warn.
    Refused(String),
}

/// The last problem logged for a link, so that a repeat goes to debug only.
#[derive(Default)]
struct Problem {
    message: Option<String>,
    refused: bool,
}

type PeerFramed<S> = Framed<S, Codec<PeerFrame, PeerFrame>>;

/// One outgoing link.
pub(super) struct Link {
    pub me: NodeId,
    pub peer: NodeId,
    pub addr: String,
    pub max_frame_bytes: usize,
    pub tls: TlsState,
}

impl Link {
    /// Connects and sends until `rx` closes or shutdown. Each problem is logged once until it
    /// changes, so a peer that stays down or keeps refusing does not flood the log.
    pub(super) async fn run(
        self,
        mut rx: mpsc::Receiver<Queued>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = RECONNECT_MIN;
        let mut problem = Problem::default();
        loop {
            let mut connected_at = None;
            let end = tokio::select! {
                r = self.connect_and_send(&mut rx, &mut connected_at, &mut problem) => r,
                _ = shutdown.changed() => return,
            };
            let Some(end) = end else { return }; // queue closed: the node is stopping
            let max = match end {
                LinkEnd::Refused(_) => REFUSED_MAX,
                LinkEnd::Down(_) => RECONNECT_MAX,
            };
            if matches!(end, LinkEnd::Down(_))
                && connected_at.is_some_and(|at: Instant| at.elapsed() >= HEALTHY_AFTER)
            {
                backoff = RECONNECT_MIN;
            }
            self.report(end, &mut problem);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(max);
        }
    }

    /// One connection's life. `None` when the queue closed.
    async fn connect_and_send(
        &self,
        rx: &mut mpsc::Receiver<Queued>,
        connected_at: &mut Option<Instant>,
        problem: &mut Problem,
    ) -> Option<LinkEnd> {
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connect()).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(end)) => return Some(end),
            Err(_) => {
                let why = format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
                return Some(LinkEnd::Down(why));
            }
        };
        *connected_at = Some(Instant::now());
        if problem.message.is_some() && !problem.refused {
            info!(peer = self.peer, addr = %self.addr, "link to n{} up again", self.peer);
            *problem = Problem::default();
        }
        debug!(peer = self.peer, addr = %self.addr, "link to peer connected");
        self.send_all(stream, rx).await.err()
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, LinkEnd> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| LinkEnd::Down(format!("cannot reach peer: {e}")))?;
        stream.set_nodelay(true).map_err(|e| LinkEnd::Down(e.to_string()))?;
        let connector = self.tls.current().peer_connector.clone();
        connector.connect(node_server_name(self.peer), stream).await.map_err(|e| {
            let why = format!("TLS handshake failed: {}", sniff::describe_handshake_error(&e));
            // A TLS verdict (a certificate we refuse, an alert) is a refusal; a socket that
            // broke mid-handshake (the peer restarting) is just down.
            if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                LinkEnd::Refused(why)
            } else {
                LinkEnd::Down(why)
            }
        })
    }

    /// Sends the hello, then every queued message, batching what is waiting into one flush.
    /// Also watches the read side: the acceptor speaks only to refuse (a `Refused` frame or a
    /// TLS alert), and a close shows up there first.
    async fn send_all<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        rx: &mut mpsc::Receiver<Queued>,
    ) -> Result<(), LinkEnd> {
        let mut framed: PeerFramed<S> = Framed::new(stream, Codec::new(self.max_frame_bytes));
        let hello = PeerFrame::Hello(PeerHello { version: PROTOCOL_VERSION, node: self.me });
        framed.send(hello).await.map_err(|e| self.broken(e))?;
        loop {
            tokio::select! {
                env = rx.recv() => {
                    let Some(queued) = env else { return Ok(()) };
                    self.feed(&mut framed, queued).await?;
                    while let Ok(more) = rx.try_recv() {
                        self.feed(&mut framed, more).await?;
                    }
                    framed.flush().await.map_err(|e| self.broken(e))?;
                }
                frame = framed.next() => return Err(self.answered(frame)),
            }
        }
    }

    /// Adds one message to the batch being written. A message carrying a snapshot (the whole
    /// string) is encoded on a blocking thread and written past the codec: encoding it here
    /// would hold the runtime's thread, which also runs this node's engine and heartbeats,
    /// for as long as copying the string takes (a second for a few hundred MB).
    async fn feed<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        framed: &mut PeerFramed<S>,
        queued: Queued,
    ) -> Result<(), LinkEnd> {
        if !carries_snapshot(&queued.env) {
            return framed.feed(PeerFrame::Msg(queued.env)).await.map_err(|e| self.broken(e));
        }
        framed.flush().await.map_err(|e| self.broken(e))?;
        let max = self.max_frame_bytes;
        let env = queued.env;
        let frame = tokio::task::spawn_blocking(move || {
            let mut frame = BytesMut::new();
            encode_frame(&PeerFrame::Msg(env), &mut frame, max).map(|()| frame)
        })
        .await
        .expect("encoding a frame does not panic")
        .map_err(|e| self.broken(e))?;
        framed.get_mut().write_all(&frame).await.map_err(|e| self.broken(e.into()))
    }

    /// What a frame (or the end of the stream) from the acceptor means.
    fn answered(&self, frame: Option<Result<PeerFrame, CodecError>>) -> LinkEnd {
        match frame {
            Some(Ok(PeerFrame::Refused(reason))) => {
                LinkEnd::Refused(format!("n{} refused this node: {reason}", self.peer))
            }
            Some(Ok(_)) => LinkEnd::Down("the peer sent an unexpected frame".into()),
            Some(Err(e)) => self.broken(e),
            None => LinkEnd::Down("connection closed by the peer".into()),
        }
    }

    fn broken(&self, error: CodecError) -> LinkEnd {
        match tls_failure(&error) {
            Some(e) => LinkEnd::Refused(format!(
                "n{} refused this node: {}",
                self.peer,
                sniff::describe_handshake_error(e)
            )),
            None => LinkEnd::Down(format!("link broke: {error}")),
        }
    }

    fn report(&self, end: LinkEnd, last: &mut Problem) {
        let (message, refused) = match end {
            LinkEnd::Down(m) => (m, false),
            LinkEnd::Refused(m) => (m, true),
        };
        if last.message.as_deref() == Some(message.as_str()) {
            debug!(peer = self.peer, addr = %self.addr, problem = %message, "link still failing");
        } else if refused {
            warn!(peer = self.peer, addr = %self.addr, "link to n{}: {message}; retrying", self.peer);
        } else {
            info!(peer = self.peer, addr = %self.addr, "link to n{}: {message}; retrying", self.peer);
        }
        *last = Problem { message: Some(message), refused };
    }
}

/// The rustls error inside a codec error, if the failure was TLS's (an alert, a bad record).
fn tls_failure(error: &CodecError) -> Option<&std::io::Error> {
    match error {
        CodecError::Io(e) if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => Some(e),
        _ => None,
    }
}
