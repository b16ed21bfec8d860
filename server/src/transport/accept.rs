//! The receiving side: accept a peer's connection, authenticate it (mutual TLS, then the
//! hello's claimed id against the certificate), and forward its messages to the engine.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use strstore_protocol::{Codec, NodeId, PeerFrame, PROTOCOL_VERSION};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_util::codec::Framed;
use tracing::{debug, info};

use crate::edge::slots::{Admission, Slot, Slots};
use crate::edge::throttle::Throttle;
use crate::inbox::Input;
use crate::tls::sniff::{self, Opening};
use crate::tls::{identity, TlsState, HANDSHAKE_TIMEOUT};

type PeerFramed = Framed<TlsStream<TcpStream>, Codec<PeerFrame, PeerFrame>>;

/// What the acceptor needs to know.
#[derive(Clone)]
pub struct AcceptConfig {
    pub me: NodeId,
    pub max_frame_bytes: usize,
    pub tls: TlsState,
    /// Slots for connections not yet authenticated; at the cap the oldest is shed.
    pub handshakes: Slots,
    /// Warnings about refused connections, rate-limited.
    pub throttle: Throttle,
}

/// How a peer connection ended.
enum PeerEnd {
    /// Refused before or after authentication: logged at warn on this node, with the reason.
    Refused(String),
    /// An authenticated connection broke or closed.
    Closed(String),
    /// Closed before a single byte (a port probe); not worth a warning.
    Silent,
}

/// Accepts peer connections until shutdown and forwards their messages to the engine.
pub async fn accept_peers(
    listener: std::sync::Arc<TcpListener>,
    config: AcceptConfig,
    inbox: mpsc::Sender<Input>,
    shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(config.throttle.clone().summarise_until(shutdown.clone()));
    let mut backoff = Duration::from_millis(10);
    loop {
        let mut stop = shutdown.clone();
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => { backoff = Duration::from_millis(10); conn }
                Err(e) => {
                    config.throttle.warn("accept failed", || format!("accepting a peer connection failed: {e}; backing off {backoff:?}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        // Unauthenticated connections are never busy, so there is always one to shed.
        let slot = match config.handshakes.admit() {
            Admission::Admitted(slot) => slot,
            Admission::Shed(slot, _) => {
                let cap = config.handshakes.cap();
                config.throttle.warn("shed at the handshake limit", || {
                    format!("{cap} peer connections in their handshake (the limit): shed the oldest to let {addr} in")
                });
                slot
            }
            Admission::Full => continue,
        };
        let config = config.clone();
        let inbox = inbox.clone();
        tokio::spawn(async move {
            tokio::select! {
                end = serve_peer(stream, addr, slot, &config, inbox) => log_end(addr, end, &config.throttle),
                _ = stop.changed() => {}
            }
        });
    }
}

fn log_end(addr: SocketAddr, end: PeerEnd, throttle: &Throttle) {
    match end {
        PeerEnd::Refused(reason) => {
            throttle.warn("refused", || format!("peer at {addr} {reason}; refused"))
        }
        PeerEnd::Closed(reason) => info!(%addr, %reason, "peer connection closed"),
        PeerEnd::Silent => debug!(%addr, "connection to the peer port closed before any byte"),
    }
}

async fn serve_peer(
    stream: TcpStream,
    addr: SocketAddr,
    slot: Slot,
    config: &AcceptConfig,
    inbox: mpsc::Sender<Input>,
) -> PeerEnd {
    let shed = slot.shed();
    let authenticated = tokio::select! {
        authenticated = tokio::time::timeout(HANDSHAKE_TIMEOUT, authenticate(stream, config)) => authenticated,
        () = shed => return PeerEnd::Refused("was still in its handshake when the handshake limit was reached (shed)".into()),
    };
    let (peer, frames) = match authenticated {
        Ok(Ok(peer)) => peer,
        Ok(Err(end)) => return end,
        Err(_) => {
            return PeerEnd::Refused(format!(
                "did not complete the TLS handshake and hello within {HANDSHAKE_TIMEOUT:?}"
            ))
        }
    };
    // Authenticated: a cluster member, no longer counted against the handshake limit.
    drop(slot);
    info!(peer, %addr, "peer n{peer} connected; its certificate proves its id");
    receive(peer, frames, config.me, inbox).await
}

/// TLS handshake (the certificate must chain to the cluster CA), then the hello, whose id must
/// be another member's and named by the certificate.
async fn authenticate(
    mut stream: TcpStream,
    config: &AcceptConfig,
) -> Result<(NodeId, PeerFramed), PeerEnd> {
    stream.set_nodelay(true).map_err(|e| PeerEnd::Closed(e.to_string()))?;
    match sniff::opening(&stream).await.map_err(|e| PeerEnd::Closed(e.to_string()))? {
        Opening::Tls => {}
        Opening::Closed => return Err(PeerEnd::Silent),
        Opening::Plaintext(first) => {
            sniff::refuse_plaintext(&mut stream).await;
            return Err(PeerEnd::Refused(format!(
                "sent plaintext, not TLS (first byte {first:#04x}); peers must use mutual TLS"
            )));
        }
    }
    let acceptor = config.tls.current().peer_acceptor.clone();
    let tls = acceptor.accept(stream).await.map_err(|e| {
        PeerEnd::Refused(format!(
            "failed the TLS handshake: {}",
            sniff::describe_handshake_error(&e)
        ))
    })?;
    let cert = peer_certificate(&tls)
        .ok_or_else(|| PeerEnd::Refused("presented no client certificate".into()))?;
    let mut frames = Framed::new(tls, Codec::new(config.max_frame_bytes));
    let claimed = read_hello(&mut frames, config).await?;
    if let Err(mismatch) = identity::check_claim(&cert, claimed) {
        return Err(refuse(&mut frames, mismatch.to_string()).await);
    }
    Ok((claimed, frames))
}

fn peer_certificate(tls: &TlsStream<TcpStream>) -> Option<CertificateDer<'static>> {
    tls.get_ref().1.peer_certificates()?.first().map(|c| c.clone().into_owned())
}

async fn read_hello(frames: &mut PeerFramed, config: &AcceptConfig) -> Result<NodeId, PeerEnd> {
    let reason = match frames.next().await {
        Some(Ok(PeerFrame::Hello(h))) if h.version != PROTOCOL_VERSION => {
            format!("speaks protocol {}, we speak {PROTOCOL_VERSION}", h.version)
        }
        // Any other id may connect, not only the members of the view: a joiner is not one
        // yet. Its certificate, from the cluster CA, is what proves the id.
        Some(Ok(PeerFrame::Hello(h))) if h.node == config.me => {
            format!("claims this node's own id {}", h.node)
        }
        Some(Ok(PeerFrame::Hello(h))) => return Ok(h.node),
        Some(Ok(_)) => "sent a first frame that was not a hello".into(),
        Some(Err(e)) => format!("sent a bad first frame: {e}"),
        None => return Err(PeerEnd::Closed("closed before its hello".into())),
    };
    Err(refuse(frames, reason).await)
}

/// Tells the dialler why (best effort, so its log says it too) and returns the refusal.
async fn refuse(frames: &mut PeerFramed, reason: String) -> PeerEnd {
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        frames.send(PeerFrame::Refused(reason.clone())),
    )
    .await;
    PeerEnd::Refused(reason)
}

async fn receive(
    peer: NodeId,
    mut frames: PeerFramed,
    me: NodeId,
    inbox: mpsc::Sender<Input>,
) -> PeerEnd {
    while let Some(frame) = frames.next().await {
        let env = match frame {
            Ok(PeerFrame::Msg(env)) if env.from == peer && env.to == me => env,
            Ok(PeerFrame::Msg(env)) => {
                let reason = format!(
                    "(authenticated as node {peer}) sent a message claiming to be from n{} to n{}",
                    env.from, env.to
                );
                return refuse(&mut frames, reason).await;
            }
            Ok(PeerFrame::Hello(_)) => {
                return refuse(&mut frames, format!("(node {peer}) sent a second hello")).await
            }
            Ok(PeerFrame::Refused(reason)) => {
                return PeerEnd::Closed(format!("n{peer} refused: {reason}"))
            }
            Err(e) => return PeerEnd::Closed(format!("from n{peer}: {e}")),
        };
        if inbox.send(Input::Peer(env)).await.is_err() {
            return PeerEnd::Closed("node stopping".into());
        }
    }
    PeerEnd::Closed(format!("n{peer} closed the connection"))
}
