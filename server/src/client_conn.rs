//! Client connections: optional TLS, the hello, then requests in and replies out on one
//! framed socket.
//!
//! The first byte tells TLS from plaintext (see [`crate::tls::sniff`]), so a client that got
//! the port's mode wrong is told so: a plaintext client on a TLS port receives a TLS alert
//! (which `strstore-cli` explains), and a TLS client on a plaintext port a goodbye frame its
//! TLS library rejects. Both are logged here with the reason.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use strstore_protocol::{
    ClientFrame, Codec, CodecError, Error, NodeId, ServerFrame, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::codec::Framed;
use tracing::{debug, info, warn};

use crate::server::Input;
use crate::tls::sniff::{self, Opening};
use crate::tls::{TlsState, HANDSHAKE_TIMEOUT};

/// Requests one connection may have awaiting replies; more are not read until some finish,
/// which pushes back on a client that pipelines without limit.
pub const MAX_OUTSTANDING_PER_CONN: usize = 1024;

/// Shared settings of the client listener.
#[derive(Clone)]
pub struct ConnLimits {
    pub node: NodeId,
    pub max_frame_bytes: usize,
    /// One permit per open connection.
    pub connections: Arc<Semaphore>,
    /// TLS material when the client port speaks TLS (`--client-tls`).
    pub tls: Option<TlsState>,
}

/// Accepts client connections until shutdown.
pub async fn accept_clients(
    listener: std::sync::Arc<TcpListener>,
    limits: ConnLimits,
    inbox: mpsc::Sender<Input>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = std::time::Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            p = limits.connections.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.changed() => return,
        };
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => { backoff = std::time::Duration::from_millis(10); conn }
                Err(e) => {
                    warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let limits = limits.clone();
        let inbox = inbox.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(reason) = open(stream, addr, &limits, inbox, shutdown).await {
                info!(client = %addr, %reason, "client connection closed with an error");
            }
            drop(permit);
        });
    }
}

/// Checks that the client speaks the port's mode, does the TLS handshake if any, and serves.
async fn open(
    mut stream: TcpStream,
    addr: SocketAddr,
    limits: &ConnLimits,
    inbox: mpsc::Sender<Input>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let opening = tokio::time::timeout(HANDSHAKE_TIMEOUT, sniff::opening(&stream)).await;
    let opening = match opening {
        Ok(opening) => opening.map_err(|e| e.to_string())?,
        Err(_) => return Err(format!("sent nothing within {HANDSHAKE_TIMEOUT:?}")),
    };
    match (&limits.tls, opening) {
        (_, Opening::Closed) => Ok(()),
        (None, Opening::Plaintext(_)) => serve(stream, limits, inbox, shutdown).await,
        (None, Opening::Tls) => {
            let reason = "a TLS handshake arrived on this plaintext client port \
                          (start the node with --client-tls, or connect without TLS)";
            warn!(client = %addr, "client connection refused: {reason}");
            let mut framed = Framed::new(stream, Codec::<ClientFrame, ServerFrame>::new(1024));
            let _ = framed.send(ServerFrame::Goodbye(Error::BadRequest(reason.into()))).await;
            Ok(())
        }
        (Some(_), Opening::Plaintext(first)) => {
            warn!(
                client = %addr,
                "client connection refused: plaintext (first byte {first:#04x}) on a TLS client \
                 port; the client needs --tls-ca"
            );
            sniff::refuse_plaintext(&mut stream).await;
            Ok(())
        }
        (Some(tls), Opening::Tls) => {
            let acceptor = tls.current().client_acceptor.clone().expect("TLS client port");
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve(stream, limits, inbox, shutdown).await,
                Ok(Err(e)) => {
                    let reason = sniff::describe_handshake_error(&e);
                    warn!(client = %addr, "client connection refused: TLS handshake failed: {reason}");
                    Ok(())
                }
                Err(_) => Err(format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")),
            }
        }
    }
}

type ClientFramed<S> = Framed<S, Codec<ClientFrame, ServerFrame>>;

async fn goodbye<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut ClientFramed<S>,
    err: Error,
) -> String {
    let reason = err.to_string();
    let _ = framed.send(ServerFrame::Goodbye(err)).await;
    reason
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    limits: &ConnLimits,
    inbox: mpsc::Sender<Input>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    // Requests from strangers are bounded by --max-frame-bytes; a reply holds at most the
    // string, which the cluster's limit bounds, so it is only bounded by the frame format.
    let codec = Codec::<ClientFrame, ServerFrame>::asymmetric(limits.max_frame_bytes, usize::MAX);
    let mut framed = Framed::new(stream, codec);
    match framed.next().await {
        Some(Ok(ClientFrame::Hello(h))) if h.version == PROTOCOL_VERSION => {}
        Some(Ok(ClientFrame::Hello(h))) => {
            return Err(goodbye(
                &mut framed,
                Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: h.version },
            )
            .await)
        }
        Some(Ok(_)) => {
            return Err(goodbye(
                &mut framed,
                Error::BadRequest("the first frame must be a hello".into()),
            )
            .await)
        }
        Some(Err(e)) => return Err(goodbye(&mut framed, Error::BadRequest(e.to_string())).await),
        None => return Ok(()),
    }
    let welcome = ServerFrame::Welcome {
        version: PROTOCOL_VERSION,
        node: limits.node,
        max_request_bytes: limits.max_frame_bytes as u64,
    };
    framed.send(welcome).await.map_err(|e| e.to_string())?;

    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel();
    let mut outstanding = 0usize;
    loop {
        tokio::select! {
            frame = framed.next(), if outstanding < MAX_OUTSTANDING_PER_CONN => match frame {
                Some(Ok(ClientFrame::Request(req))) => {
                    debug!(client = req.client, seq = req.seq, "request");
                    outstanding += 1;
                    if inbox.send(Input::Request { req, reply: reply_tx.clone() }).await.is_err() {
                        let err = Error::Unavailable { reason: "node shutting down".into(), try_nodes: vec![] };
                        return Err(goodbye(&mut framed, err).await);
                    }
                }
                Some(Ok(frame @ (ClientFrame::Status | ClientFrame::Inspect))) => {
                    outstanding += 1;
                    let reply = reply_tx.clone();
                    let input = if frame == ClientFrame::Status { Input::Status { reply } } else { Input::Inspect { reply } };
                    if inbox.send(input).await.is_err() {
                        let err = Error::Unavailable { reason: "node shutting down".into(), try_nodes: vec![] };
                        return Err(goodbye(&mut framed, err).await);
                    }
                }
                Some(Ok(ClientFrame::Hello(_))) => {
                    return Err(goodbye(&mut framed, Error::BadRequest("unexpected second hello".into())).await)
                }
                // A TLS client that closes without close_notify (as strstore-cli does on exit)
                // is a normal end of the connection, not an error worth logging.
                Some(Err(CodecError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Some(Err(e)) => return Err(goodbye(&mut framed, Error::BadRequest(e.to_string())).await),
                None => return Ok(()),
            },
            Some(reply) = reply_rx.recv() => {
                outstanding -= 1;
                framed.feed(reply).await.map_err(|e| e.to_string())?;
                while let Ok(more) = reply_rx.try_recv() {
                    outstanding -= 1;
                    framed.feed(more).await.map_err(|e| e.to_string())?;
                }
                framed.flush().await.map_err(|e| e.to_string())?;
            }
            _ = shutdown.changed() => {
                let err = Error::Unavailable { reason: "node shutting down".into(), try_nodes: vec![] };
                goodbye(&mut framed, err).await;
                return Ok(());
            }
        }
    }
}
