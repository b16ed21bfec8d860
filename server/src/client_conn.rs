//! Client connections: optional TLS, the hello, then requests in and replies out on one
//! framed socket.
//!
//! The first byte tells TLS from plaintext (see [`crate::tls::sniff`]), so a client that got
//! the port's mode wrong is told so: a plaintext client on a TLS port receives a TLS alert
//! (which `strstore-cli` explains), and a TLS client on a plaintext port a goodbye frame its
//! TLS library rejects. Both are logged here with the reason.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::SinkExt;
use strstore_protocol::{ClientFrame, Codec, Error, NodeId, Reply, ServerFrame, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::FramedWrite;
use tracing::debug;

use crate::edge::reader::{FrameReader, ReadError, RequestBudget};
use crate::edge::slots::{Admission, Shed, Slot, Slots};
use crate::edge::throttle::Throttle;
use crate::inbox::Input;
use crate::tls::identity::{certified_role, ClientRole};
use crate::tls::sniff::{self, Opening};
use crate::tls::{TlsState, HANDSHAKE_TIMEOUT};

/// Requests one connection may have awaiting replies; more are not read until some finish,
/// which pushes back on a client that pipelines without limit.
pub const MAX_OUTSTANDING_PER_CONN: usize = 1024;

/// Largest first frame: a hello is a few bytes, so nobody may buffer more before saying who
/// they are.
const MAX_HELLO_BYTES: usize = 1024;

/// Default `--client-idle-timeout`: a connection with nothing in flight that sends nothing
/// for this long is closed (and an idle one is the first shed when the node is full).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Shared settings of the client listener.
#[derive(Clone)]
pub struct ConnLimits {
    pub node: NodeId,
    pub max_frame_bytes: usize,
    /// One slot per open connection, shedding the least useful at the cap.
    pub slots: Slots,
    /// Bytes that requests being read may hold, across all connections.
    pub budget: RequestBudget,
    /// How long a connection with nothing in flight may stay silent (`None`: for ever).
    pub idle_timeout: Option<Duration>,
    /// TLS material when the client port speaks TLS (`--client-tls`).
    pub tls: Option<TlsState>,
    /// Warnings about refused, shed and slow connections.
    pub throttle: Throttle,
}

/// Accepts client connections until shutdown.
pub async fn accept_clients(
    listener: std::sync::Arc<TcpListener>,
    limits: ConnLimits,
    inbox: mpsc::Sender<Input>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(limits.throttle.clone().summarise_until(shutdown.clone()));
    let mut backoff = Duration::from_millis(10);
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => { backoff = Duration::from_millis(10); conn }
                Err(e) => {
                    // EMFILE/ENFILE: the caps keep this node below its own limit, so another
                    // process is short of descriptors; wait rather than spin.
                    limits.throttle.warn("accept failed", || format!("accepting a client connection failed: {e}; backing off {backoff:?}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Some(slot) = admit(&limits, addr) else { continue };
        let limits = limits.clone();
        let inbox = inbox.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let shed = slot.shed();
            let end = tokio::select! {
                end = open(stream, slot, &limits, inbox, shutdown) => end,
                () = shed => Err(("shed", "closed to make room for a newer connection".into())),
            };
            if let Err((kind, reason)) = end {
                let verb = if REFUSALS.contains(&kind) { "refused" } else { "closed" };
                let message = || format!("client connection {verb}: {reason} (client {addr})");
                limits.throttle.warn(kind, message);
            }
        });
    }
}

/// A slot for a new connection, or `None` (it is dropped, so closed) when every slot works.
fn admit(limits: &ConnLimits, addr: SocketAddr) -> Option<Slot> {
    let cap = limits.slots.cap();
    match limits.slots.admit() {
        Admission::Admitted(slot) => Some(slot),
        Admission::Shed(slot, shed) => {
            let victim = match shed {
                Shed::Opening => "the oldest connection still in its hello",
                Shed::Idle => "the connection idle longest",
            };
            limits.throttle.warn("shed at the connection limit", || {
                format!("client connection limit ({cap}, --max-connections) reached: shed {victim} to let {addr} in")
            });
            Some(slot)
        }
        Admission::Full => {
            limits.throttle.warn("refused at the connection limit", || {
                format!("client connection limit ({cap}, --max-connections) reached and every connection has requests in flight: refused {addr}")
            });
            None
        }
    }
}

/// Kinds of [`ConnEnd`] that turned a connection away before it was served.
const REFUSALS: [&str; 3] = ["wrong mode", "TLS handshake failed", "bad hello"];

/// Why a connection ended early: a kind (for the throttled summary) and the reason.
type ConnEnd = Result<(), (&'static str, String)>;

/// Checks that the client speaks the port's mode, does the TLS handshake if any, and serves.
/// Everything up to the end of the hello must fit in [`HANDSHAKE_TIMEOUT`].
async fn open(
    mut stream: TcpStream,
    slot: Slot,
    limits: &ConnLimits,
    inbox: mpsc::Sender<Input>,
    shutdown: watch::Receiver<bool>,
) -> ConnEnd {
    let accepted = Instant::now();
    let io_err = |e: std::io::Error| ("i/o error", e.to_string());
    stream.set_nodelay(true).map_err(io_err)?;
    let opening = tokio::time::timeout(HANDSHAKE_TIMEOUT, sniff::opening(&stream)).await;
    let opening = match opening {
        Ok(opening) => opening.map_err(io_err)?,
        Err(_) => return Err(("silent", format!("sent nothing within {HANDSHAKE_TIMEOUT:?}"))),
    };
    match (&limits.tls, opening) {
        (_, Opening::Closed) => Ok(()),
        (None, Opening::Plaintext(_)) => {
            // Without client certificates there is nobody to tell apart: every client writes.
            let role = ClientRole::Write;
            serve(stream, slot, accepted, role, limits, inbox, shutdown).await
        }
        (None, Opening::Tls) => {
            let reason = "a TLS handshake arrived on this plaintext client port \
                          (start the node with --client-tls, or connect without TLS)";
            let mut framed = FramedWrite::new(stream, Codec::<ClientFrame, ServerFrame>::new(1024));
            let _ = framed.send(ServerFrame::Goodbye(Error::BadRequest(reason.into()))).await;
            Err(("wrong mode", reason.to_string()))
        }
        (Some(_), Opening::Plaintext(first)) => {
            sniff::refuse_plaintext(&mut stream).await;
            Err(("wrong mode", format!(
                "plaintext (first byte {first:#04x}) on a TLS client port; the client needs --tls-ca"
            )))
        }
        (Some(tls), Opening::Tls) => {
            let acceptor = tls.current().client_acceptor.clone().expect("TLS client port");
            let left = HANDSHAKE_TIMEOUT.saturating_sub(accepted.elapsed());
            match tokio::time::timeout(left, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => match role_of(&stream) {
                    Ok(role) => serve(stream, slot, accepted, role, limits, inbox, shutdown).await,
                    Err(reason) => {
                        let codec = Codec::<ClientFrame, ServerFrame>::new(1024);
                        let mut framed = FramedWrite::new(stream, codec);
                        let goodbye = ServerFrame::Goodbye(Error::BadRequest(reason.clone()));
                        let _ = framed.send(goodbye).await;
                        Err(("TLS handshake failed", reason))
                    }
                },
                Ok(Err(e)) => {
                    let reason = sniff::describe_handshake_error(&e);
                    Err(("TLS handshake failed", format!("TLS handshake failed: {reason}")))
                }
                Err(_) => {
                    Err(("slow hello", format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")))
                }
            }
        }
    }
}

/// What the client behind `stream` may do: the role in its certificate, or `write` when the
/// port asks for no certificate (`--client-auth none`).
fn role_of(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> Result<ClientRole, String> {
    let Some(cert) = stream.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
        return Ok(ClientRole::Write);
    };
    certified_role(cert).ok_or_else(|| {
        "its client certificate grants no role (no strstore:role:read or strstore:role:write \
         name; certificates made before roles existed have none): re-issue it with \
         `strstore-server certs --client NAME --role read|write`"
            .to_string()
    })
}

/// A refusal for a request the client's role does not allow, or `None` if it may.
fn forbidden(role: ClientRole, op: &strstore_protocol::Op) -> Option<Error> {
    let op = match op {
        strstore_protocol::Op::Append(_) => "append",
        strstore_protocol::Op::Set(_) => "set",
        _ => return None,
    };
    (role == ClientRole::Read)
        .then(|| Error::Forbidden { role: role.as_str().into(), op: op.into() })
}

type Replies<S> = FramedWrite<tokio::io::WriteHalf<S>, Codec<ClientFrame, ServerFrame>>;

/// Tells the client why the connection ends (best effort) and returns the reason.
async fn goodbye<S: AsyncWrite>(
    replies: &mut Replies<S>,
    kind: &'static str,
    err: Error,
) -> (&'static str, String) {
    let reason = err.to_string();
    let _ =
        tokio::time::timeout(Duration::from_secs(1), replies.send(ServerFrame::Goodbye(err))).await;
    (kind, reason)
}

/// What a frame that could not be read tells the client, or `None` when the connection simply
/// ended or cannot be written to.
fn refusal(error: &ReadError) -> Option<(&'static str, Error)> {
    match error {
        ReadError::Closed | ReadError::Io(_) | ReadError::Truncated { .. } => None,
        ReadError::Busy { .. } => Some(("busy", Error::Busy(error.to_string()))),
        ReadError::Idle(_) => Some(("idle", Error::BadRequest(format!("closing: {error}")))),
        ReadError::TooSlow { .. } => Some(("too slow", Error::BadRequest(error.to_string()))),
        ReadError::TooLarge { .. } | ReadError::Malformed(_) => {
            Some(("bad frame", Error::BadRequest(error.to_string())))
        }
    }
}

/// Ends the connection after a read error, telling the client why when it can hear it.
async fn read_failed<S: AsyncWrite>(replies: &mut Replies<S>, error: ReadError) -> ConnEnd {
    match refusal(&error) {
        Some((kind, err)) => Err(goodbye(replies, kind, err).await),
        // A TLS client that closes without close_notify (as strstore-cli does on exit) is a
        // normal end of the connection, not an error worth logging.
        None if matches!(&error, ReadError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof) => {
            Ok(())
        }
        None if matches!(error, ReadError::Closed) => Ok(()),
        None => Err(("i/o error", error.to_string())),
    }
}

async fn serve<S: AsyncRead + AsyncWrite>(
    stream: S,
    slot: Slot,
    accepted: Instant,
    role: ClientRole,
    limits: &ConnLimits,
    inbox: mpsc::Sender<Input>,
    shutdown: watch::Receiver<bool>,
) -> ConnEnd {
    let (read, write) = tokio::io::split(stream);
    // Requests from strangers are bounded by --max-frame-bytes; a reply holds at most the
    // string, which the cluster's limit bounds, so it is only bounded by the frame format.
    let codec = Codec::<ClientFrame, ServerFrame>::asymmetric(limits.max_frame_bytes, usize::MAX);
    let mut replies = FramedWrite::new(write, codec);
    let mut reader = FrameReader::new(read, MAX_HELLO_BYTES, limits.budget.clone(), slot);
    let left = HANDSHAKE_TIMEOUT.saturating_sub(accepted.elapsed());
    let hello = match reader.next::<ClientFrame>(Some(left)).await {
        Ok((hello, _)) => hello,
        Err(ReadError::Idle(_)) => {
            return Err(("slow hello", format!("no hello within {HANDSHAKE_TIMEOUT:?}")))
        }
        Err(e) => return read_failed(&mut replies, e).await,
    };
    match hello {
        ClientFrame::Hello(h) if h.version == PROTOCOL_VERSION => {}
        ClientFrame::Hello(h) => {
            let err = Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: h.version };
            return Err(goodbye(&mut replies, "bad hello", err).await);
        }
        _ => {
            let err = Error::BadRequest("the first frame must be a hello".into());
            return Err(goodbye(&mut replies, "bad hello", err).await);
        }
    }
    reader.mark_open(limits.max_frame_bytes);
    let welcome = ServerFrame::Welcome {
        version: PROTOCOL_VERSION,
        node: limits.node,
        max_request_bytes: limits.max_frame_bytes as u64,
    };
    replies.send(welcome).await.map_err(|e| ("i/o error", e.to_string()))?;
    requests(reader, replies, role, limits, inbox, shutdown).await
}

fn shutting_down() -> Error {
    Error::Unavailable { reason: "node shutting down".into(), try_nodes: vec![] }
}

/// Requests in, replies out, until the client leaves, misbehaves or the node stops.
async fn requests<R: AsyncRead + Unpin, S: AsyncWrite>(
    mut reader: FrameReader<R>,
    mut replies: Replies<S>,
    role: ClientRole,
    limits: &ConnLimits,
    inbox: mpsc::Sender<Input>,
    mut shutdown: watch::Receiver<bool>,
) -> ConnEnd {
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel();
    let mut outstanding = 0usize;
    let io_err = |e: strstore_protocol::CodecError| ("i/o error", e.to_string());
    loop {
        reader.set_in_flight(outstanding > 0);
        // Waiting for replies is not idleness: the idle clock runs only with nothing in flight.
        let wait = if outstanding == 0 { limits.idle_timeout } else { None };
        tokio::select! {
            frame = reader.next::<ClientFrame>(wait), if outstanding < MAX_OUTSTANDING_PER_CONN => {
                let (frame, _budget) = match frame {
                    Ok(frame) => frame,
                    Err(e) => return read_failed(&mut replies, e).await,
                };
                let reply = reply_tx.clone();
                let input = match frame {
                    ClientFrame::Request(req) => {
                        debug!(client = req.client, seq = req.seq, "request");
                        if let Some(err) = forbidden(role, &req.op) {
                            outstanding += 1;
                            let refused = Reply { seq: req.seq, result: Err(err) };
                            let _ = reply.send(ServerFrame::Reply(refused));
                            continue;
                        }
                        Input::Request { req, reply }
                    }
                    ClientFrame::Status => Input::Status { reply },
                    ClientFrame::Inspect => Input::Inspect { reply },
                    ClientFrame::Hello(_) => {
                        let err = Error::BadRequest("unexpected second hello".into());
                        return Err(goodbye(&mut replies, "bad frame", err).await);
                    }
                };
                outstanding += 1;
                if inbox.send(input).await.is_err() {
                    return Err(goodbye(&mut replies, "shutdown", shutting_down()).await);
                }
            },
            Some(reply) = reply_rx.recv() => {
                outstanding -= 1;
                replies.feed(reply).await.map_err(io_err)?;
                while let Ok(more) = reply_rx.try_recv() {
                    outstanding -= 1;
                    replies.feed(more).await.map_err(io_err)?;
                }
                replies.flush().await.map_err(io_err)?;
            }
            _ = shutdown.changed() => {
                goodbye(&mut replies, "shutdown", shutting_down()).await;
                return Ok(());
            }
        }
    }
}
