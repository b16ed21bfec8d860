//! Telling TLS from plaintext on a port, so that a misconfigured peer or client gets a clear
//! reason (in our log and, for clients, on their screen) instead of a hang or a decode error.
//!
//! Every TLS connection opens with a handshake record (first byte 0x16), while every strstore
//! plaintext connection opens with a frame whose 4-byte length starts with 0x00 for any frame
//! under 16 MiB. One peeked byte tells them apart without consuming anything.

use std::io;

use rustls::CertificateError;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Content type of a TLS handshake record: the first byte of every TLS connection.
pub const TLS_HANDSHAKE: u8 = 0x16;

/// A fatal TLS alert record (`unexpected_message`), our answer to plaintext on a TLS port. A
/// strstore client that reads it where it expected a frame knows the port speaks TLS.
pub const PLAINTEXT_REFUSED_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a];

/// How a connection opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// With a TLS handshake record.
    Tls,
    /// With this byte, which no TLS connection starts with.
    Plaintext(u8),
    /// The other side closed before sending anything.
    Closed,
}

/// Waits for the first byte of `stream` and classifies it, leaving it unread.
pub async fn opening(stream: &TcpStream) -> io::Result<Opening> {
    let mut first = [0u8; 1];
    Ok(match stream.peek(&mut first).await? {
        0 => Opening::Closed,
        _ if first[0] == TLS_HANDSHAKE => Opening::Tls,
        _ => Opening::Plaintext(first[0]),
    })
}

/// Answers plaintext on a TLS port with a TLS alert and closes the write side. Best effort:
/// the connection is being refused anyway.
pub async fn refuse_plaintext(stream: &mut TcpStream) {
    let _ = stream.write_all(&PLAINTEXT_REFUSED_ALERT).await;
    let _ = stream.shutdown().await;
}

/// Why a TLS handshake failed, in words about the other side ("its certificate ...").
pub fn describe_handshake_error(error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        return "it closed the connection during the TLS handshake".into();
    }
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return format!("TLS handshake failed: {error}");
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => describe_certificate_error(cert, tls),
        rustls::Error::NoCertificatesPresented => "it presented no certificate".into(),
        rustls::Error::AlertReceived(alert) => format!(
            "TLS alert {alert:?}: it does not accept our certificate (signed by another CA, or \
             expired?)"
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}

fn describe_certificate_error(cert: &CertificateError, full: &rustls::Error) -> String {
    match cert {
        CertificateError::UnknownIssuer => "its certificate is not signed by the cluster CA".into(),
        CertificateError::BadSignature => {
            "its certificate is not signed by the cluster CA (bad signature)".into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("its certificate has expired ({full})")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("its certificate is not valid yet ({full}); are the clocks in sync?")
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("its certificate is not for the node we dialled ({full})")
        }
        _ => format!("its certificate was refused ({full})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_error(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn handshake_errors_read_plainly() {
        let unknown = tls_error(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert_eq!(
            describe_handshake_error(&unknown),
            "its certificate is not signed by the cluster CA"
        );
        let expired = tls_error(rustls::Error::InvalidCertificate(CertificateError::Expired));
        assert!(describe_handshake_error(&expired).starts_with("its certificate has expired"));
        let none = tls_error(rustls::Error::NoCertificatesPresented);
        assert_eq!(describe_handshake_error(&none), "it presented no certificate");
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(describe_handshake_error(&eof).contains("closed the connection"));
    }

    #[test]
    fn plaintext_frames_never_look_like_tls() {
        // A frame's first byte is the top byte of its length: 0x16 would mean >= 352 MiB.
        let hello = strstore_protocol::codec::to_frame(&strstore_protocol::PeerFrame::Hello(
            strstore_protocol::PeerHello { version: 1, node: 1 },
        ));
        assert_ne!(hello[0], TLS_HANDSHAKE);
        assert_eq!(PLAINTEXT_REFUSED_ALERT[0], 0x15, "alert record");
    }
}
