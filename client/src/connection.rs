//! One open connection to one node: the hello, then requests answered by replies.
//!
//! [`Connection`] is generic over the byte stream, plain TCP or TLS ([`Stream`]), so the
//! framing is the same either way. It knows nothing about retries; it reports what happened
//! as a [`ConnError`] and the client decides what to do next.

use std::io;

use futures::{SinkExt, StreamExt};
use strstore_protocol::{
    ClientFrame, ClientHello, Codec, CodecError, Error, NodeId, Request, Response, ServerFrame,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tracing::debug;

use crate::stream::Stream;
use crate::tls::{looks_like_tls, server_name, tls_error, TlsFailure};

/// Why a connection stopped being useful.
#[derive(Debug)]
pub(crate) enum ConnError {
    /// The socket failed or the node closed it. The connection is gone.
    Io(String),
    /// The node closed the connection with this error ([`ServerFrame::Goodbye`]), or welcomed
    /// us with a protocol version we do not speak.
    Rejected(Error),
    /// The node sent something we cannot make sense of.
    Protocol(String),
    /// Our request does not fit in a frame; nothing was written.
    RequestTooLarge { len: usize, max: usize },
    /// TLS failed, or only one side speaks it: a settings mismatch, not a passing fault.
    Tls(TlsFailure),
}

/// A connection that has completed the hello.
pub(crate) struct Connection<S> {
    framed: Framed<S, Codec<ServerFrame, ClientFrame>>,
    /// The node that welcomed us, for logs.
    node: NodeId,
}

/// Opens a TCP connection with Nagle's algorithm off: every frame is a whole request that the
/// node is waiting for, so batching small writes would only add latency.
pub(crate) async fn connect_tcp(addr: &str) -> Result<TcpStream, ConnError> {
    let stream = TcpStream::connect(addr).await.map_err(|e| ConnError::Io(describe_io(&e)))?;
    stream.set_nodelay(true).map_err(|e| ConnError::Io(describe_io(&e)))?;
    Ok(stream)
}

/// Opens a TCP connection to `addr` and, with `tls`, does the TLS handshake, verifying the
/// node's certificate for the host in `addr`.
pub(crate) async fn open(addr: &str, tls: Option<&TlsConnector>) -> Result<Stream, ConnError> {
    let stream = connect_tcp(addr).await?;
    let Some(connector) = tls else { return Ok(Stream::Plain(stream)) };
    let name = server_name(addr).map_err(|e| ConnError::Io(e.to_string()))?;
    match connector.connect(name, stream).await {
        Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
        Err(e) => Err(io_error(&e)),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// Sends our hello on `stream` and waits for the node's welcome. Frames in either
    /// direction are limited to `max_frame_bytes`.
    pub(crate) async fn handshake(stream: S, max_frame_bytes: usize) -> Result<Self, ConnError> {
        let mut framed = Framed::new(stream, Codec::new(max_frame_bytes));
        let hello = ClientFrame::Hello(ClientHello { version: PROTOCOL_VERSION });
        framed.send(hello).await.map_err(send_error)?;
        let welcome = match read_frame(&mut framed).await {
            // A TLS alert or handshake where a frame should be: the port speaks TLS.
            Err(_) if looks_like_tls(framed.read_buffer()) => {
                return Err(ConnError::Tls(TlsFailure::NodeSpeaksTls))
            }
            other => other?,
        };
        match welcome {
            ServerFrame::Welcome { version, node, max_request_bytes }
                if version == PROTOCOL_VERSION =>
            {
                debug!(node, max_request_bytes, "connected");
                // Never send what the node would cut off: it closes the connection at the
                // header, and a client that is still writing sees only a reset and retries.
                let limit = usize::try_from(max_request_bytes).unwrap_or(usize::MAX);
                framed.codec_mut().limit_writes(limit);
                Ok(Self { framed, node })
            }
            ServerFrame::Welcome { version, .. } => {
                Err(ConnError::Rejected(Error::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: version,
                }))
            }
            ServerFrame::Goodbye(error) => Err(ConnError::Rejected(error)),
            ServerFrame::Reply(reply) => Err(ConnError::Protocol(format!(
                "reply to request {} before the welcome",
                reply.seq
            ))),
            ServerFrame::Status(_) | ServerFrame::Inspection(_) => {
                Err(ConnError::Protocol("an answer before the welcome".into()))
            }
        }
    }

    /// Sends a question that is not a request (`Status`, `Inspect`) and returns the answer,
    /// the first frame that is neither a reply nor a goodbye.
    pub(crate) async fn ask(&mut self, question: ClientFrame) -> Result<ServerFrame, ConnError> {
        self.framed.send(question).await.map_err(send_error)?;
        loop {
            match read_frame(&mut self.framed).await? {
                ServerFrame::Goodbye(error) => return Err(ConnError::Rejected(error)),
                ServerFrame::Reply(_) => {}
                ServerFrame::Welcome { .. } => {
                    return Err(ConnError::Protocol("second welcome on one connection".into()));
                }
                answer @ (ServerFrame::Status(_) | ServerFrame::Inspection(_)) => {
                    return Ok(answer)
                }
            }
        }
    }

    /// Sends `request` and waits for the reply with its sequence number. Replies to other
    /// requests (left over from an earlier attempt) are skipped. The outer `Result` is the
    /// connection's fate; the inner one is the node's answer.
    pub(crate) async fn call(
        &mut self,
        request: Request,
    ) -> Result<Result<Response, Error>, ConnError> {
        let seq = request.seq;
        self.framed.send(ClientFrame::Request(request)).await.map_err(send_error)?;
        loop {
            match read_frame(&mut self.framed).await? {
                ServerFrame::Reply(reply) if reply.seq == seq => return Ok(reply.result),
                ServerFrame::Reply(reply) => {
                    debug!(node = self.node, seq = reply.seq, "skipping reply to another request");
                }
                ServerFrame::Goodbye(error) => return Err(ConnError::Rejected(error)),
                ServerFrame::Welcome { .. } => {
                    return Err(ConnError::Protocol("second welcome on one connection".into()));
                }
                ServerFrame::Status(_) | ServerFrame::Inspection(_) => {
                    debug!(node = self.node, "skipping the answer to an earlier question");
                }
            }
        }
    }

    /// The node at the other end.
    pub(crate) fn node(&self) -> NodeId {
        self.node
    }
}

/// Reads the next frame; a closed connection is an error because we are always waiting for
/// an answer when we read.
async fn read_frame<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, Codec<ServerFrame, ClientFrame>>,
) -> Result<ServerFrame, ConnError> {
    match framed.next().await {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(error)) => Err(receive_error(error)),
        None => Err(ConnError::Io("connection closed by the node".into())),
    }
}

fn send_error(error: CodecError) -> ConnError {
    match error {
        CodecError::FrameTooLarge { len, max } => ConnError::RequestTooLarge { len, max },
        CodecError::Io(e) => io_error(&e),
        other => ConnError::Io(other.to_string()),
    }
}

fn receive_error(error: CodecError) -> ConnError {
    match error {
        CodecError::FrameTooLarge { len, max } => ConnError::Protocol(format!(
            "reply of {len} bytes exceeds this client's reply limit of {max} bytes \
             (max_reply_bytes, strstore-cli --max-reply-bytes); read the string in parts with \
             get --offset/--len, or raise the limit"
        )),
        CodecError::Malformed(why) => {
            ConnError::Protocol(format!("malformed frame from node: {why}"))
        }
        CodecError::Truncated { .. } => ConnError::Io(error.to_string()),
        CodecError::Io(e) => io_error(&e),
    }
}

/// A socket error, or a TLS error (an alert from the node, a certificate we refuse).
fn io_error(error: &io::Error) -> ConnError {
    match tls_error(error) {
        Some(tls) => ConnError::Tls(TlsFailure::Tls(tls.clone())),
        None => ConnError::Io(describe_io(error)),
    }
}

/// A short lowercase description ("connection refused") for the common socket failures, and
/// the full message (which names the cause, such as a failed DNS lookup) for the rest.
pub(crate) fn describe_io(error: &io::Error) -> String {
    use io::ErrorKind::*;
    match error.kind() {
        kind @ (ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected
        | BrokenPipe | TimedOut | UnexpectedEof | AddrNotAvailable | HostUnreachable
        | NetworkUnreachable) => kind.to_string(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_socket_errors_read_plainly() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(describe_io(&refused), "connection refused");
        let other = io::Error::other("failed to lookup address information");
        assert_eq!(describe_io(&other), "failed to lookup address information");
    }

    #[test]
    fn oversized_reply_is_a_protocol_error_naming_the_limit() {
        let ConnError::Protocol(message) =
            receive_error(CodecError::FrameTooLarge { len: 9, max: 8 })
        else {
            panic!("expected a protocol error");
        };
        assert!(message.contains("reply limit of 8 bytes (max_reply_bytes"), "{message}");
        assert!(message.contains("--offset"), "says how to read it anyway: {message}");
    }
}
