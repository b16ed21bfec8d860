//! Client connections: handshake, then requests in and replies out on one framed socket.

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use strstore_protocol::{ClientFrame, Codec, Error, NodeId, ServerFrame, PROTOCOL_VERSION};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::codec::Framed;
use tracing::{debug, info, warn};

use crate::server::Input;

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
}

/// Accepts client connections until shutdown.
pub async fn accept_clients(
    listener: TcpListener,
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
            if let Err(reason) = serve(stream, &limits, inbox, shutdown).await {
                info!(client = %addr, %reason, "client connection closed with an error");
            }
            drop(permit);
        });
    }
}

type ClientFramed = Framed<TcpStream, Codec<ClientFrame, ServerFrame>>;

async fn goodbye(framed: &mut ClientFramed, err: Error) -> String {
    let reason = err.to_string();
    let _ = framed.send(ServerFrame::Goodbye(err)).await;
    reason
}

async fn serve(
    stream: TcpStream,
    limits: &ConnLimits,
    inbox: mpsc::Sender<Input>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut framed =
        Framed::new(stream, Codec::<ClientFrame, ServerFrame>::new(limits.max_frame_bytes));
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
    let welcome = ServerFrame::Welcome { version: PROTOCOL_VERSION, node: limits.node };
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
                Some(Ok(ClientFrame::Status)) => {
                    outstanding += 1;
                    if inbox.send(Input::Status { reply: reply_tx.clone() }).await.is_err() {
                        let err = Error::Unavailable { reason: "node shutting down".into(), try_nodes: vec![] };
                        return Err(goodbye(&mut framed, err).await);
                    }
                }
                Some(Ok(ClientFrame::Hello(_))) => {
                    return Err(goodbye(&mut framed, Error::BadRequest("unexpected second hello".into())).await)
                }
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
