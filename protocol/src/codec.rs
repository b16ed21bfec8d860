//! Frames: a 4-byte big-endian length followed by that many bytes of postcard.
//!
//! One [`Codec`] type serves every connection; its type parameters say what it reads and what
//! it writes. The maximum frame size is explicit: a frame announcing more is refused before
//! any of it is buffered, so a hostile length cannot make a node allocate.

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder};

/// Default largest frame a peer or node accepts: 16 MiB. Large enough for a batch of writes
/// at the default 1 MiB value limit; small enough that one connection cannot exhaust memory.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// Bytes of the length prefix.
const HEADER_BYTES: usize = 4;

/// Why a stream of frames could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The frame announces more bytes than this end accepts.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    /// The frame is complete but its body is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Length-delimited postcard codec reading `In` and writing `Out`.
pub struct Codec<In, Out> {
    max_frame_bytes: usize,
    max_out_bytes: usize,
    _types: PhantomData<fn(Out) -> In>,
}

/// The largest frame the 4-byte length prefix can describe.
pub const MAX_FRAME_FORMAT_BYTES: usize = u32::MAX as usize;

impl<In, Out> Codec<In, Out> {
    /// A codec that refuses frames longer than `max_frame_bytes` in both directions.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self::asymmetric(max_frame_bytes, max_frame_bytes)
    }

    /// A codec that reads frames of at most `max_in` bytes and writes frames of at most
    /// `max_out` (capped by what the length prefix can say): a node reads small requests
    /// from strangers but may answer with a string as large as the cluster allows.
    pub fn asymmetric(max_in: usize, max_out: usize) -> Self {
        let max_out_bytes = max_out.min(MAX_FRAME_FORMAT_BYTES);
        Self { max_frame_bytes: max_in, max_out_bytes, _types: PhantomData }
    }

    /// Lowers the limit on what this codec writes (it never rises above the one it had).
    pub fn limit_writes(&mut self, max_out: usize) {
        self.max_out_bytes = self.max_out_bytes.min(max_out);
    }

    /// The frame limit this codec enforces on what it reads.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }
}

impl<In, Out> Default for Codec<In, Out> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl<In, Out> Clone for Codec<In, Out> {
    fn clone(&self) -> Self {
        Self::asymmetric(self.max_frame_bytes, self.max_out_bytes)
    }
}

impl<In: DeserializeOwned, Out> Decoder for Codec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        if src.len() < HEADER_BYTES {
            return Ok(None);
        }
        let len = u32::from_be_bytes(src[..HEADER_BYTES].try_into().expect("4 bytes")) as usize;
        if len > self.max_frame_bytes {
            return Err(CodecError::FrameTooLarge { len, max: self.max_frame_bytes });
        }
        if src.len() < HEADER_BYTES + len {
            src.reserve(HEADER_BYTES + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_BYTES);
        let body = src.split_to(len);
        postcard::from_bytes(&body).map(Some).map_err(|e| CodecError::Malformed(e.to_string()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::Truncated { buffered: src.len() }),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for Codec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&item, dst, self.max_out_bytes)
    }
}

/// Appends one frame holding `item` to `dst`, serialising in place (no intermediate buffer).
/// A message too large to send is an error for the caller to report; `dst` is left as it was.
pub fn encode_frame<T: Serialize>(
    item: &T,
    dst: &mut BytesMut,
    max_frame_bytes: usize,
) -> Result<(), CodecError> {
    let start = dst.len();
    dst.put_u32(0);
    // Serialising our own types into memory cannot fail short of a bug.
    let dst = match postcard::to_io(item, dst.writer()) {
        Ok(writer) => writer.into_inner(),
        Err(e) => panic!("postcard encoding failed: {e}"),
    };
    let len = dst.len() - start - HEADER_BYTES;
    if len > max_frame_bytes {
        dst.truncate(start);
        return Err(CodecError::FrameTooLarge { len, max: max_frame_bytes });
    }
    dst[start..start + HEADER_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Encodes one message as a single frame (for tests and tools that write raw bytes).
pub fn to_frame<T: Serialize>(item: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(item, &mut buf, usize::MAX).expect("no limit");
    buf.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![arb_bytes().prop_map(Op::Append), arb_bytes().prop_map(Op::Set), Just(Op::Get),]
    }

    fn arb_error() -> impl Strategy<Value = crate::Error> {
        use crate::Error;
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(size, max)| Error::ValueTooLarge { size, max }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(would_be, max)| Error::StringTooLarge { would_be, max }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(ours, theirs)| Error::VersionMismatch { ours, theirs }),
            ".*".prop_map(Error::BadRequest),
            (".*", proptest::collection::vec(".*", 0..3))
                .prop_map(|(reason, try_nodes)| Error::Unavailable { reason, try_nodes }),
            any::<u64>().prop_map(|seq| Error::Superseded { seq }),
            ".*".prop_map(Error::Busy),
        ]
    }

    fn arb_ts() -> impl Strategy<Value = Timestamp> {
        (any::<u64>(), any::<u64>()).prop_map(|(t, n)| Timestamp::new(t, n))
    }

    fn arb_write() -> impl Strategy<Value = Write> {
        (any::<u64>(), any::<u64>(), arb_bytes(), any::<bool>()).prop_map(|(client, seq, v, a)| {
            Write { client, seq, op: if a { WriteOp::Append(v) } else { WriteOp::Set(v) } }
        })
    }

    fn arb_peer_msg() -> impl Strategy<Value = PeerMsg> {
        prop_oneof![
            (
                arb_ts(),
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(arb_write(), 0..4),
                any::<(u64, u64)>()
            )
                .prop_map(|(id, epoch, oseq, writes, (v, s))| PeerMsg::Action(
                    Action {
                        id,
                        epoch,
                        oseq,
                        writes,
                        limits: Limits { max_value_bytes: v, max_string_bytes: s },
                    }
                )),
            arb_ts().prop_map(|id| PeerMsg::Fence { id }),
            (arb_ts(), any::<u64>(), arb_ts()).prop_map(|(id, hw, applied)| PeerMsg::Ack {
                id,
                hw,
                applied
            }),
            (arb_ts(), proptest::collection::vec((any::<u64>(), any::<u64>()), 0..5))
                .prop_map(|(id, deps)| PeerMsg::Execute { id, deps }),
            any::<u64>().prop_map(|current| PeerMsg::StaleEpoch { current }),
        ]
    }

    fn roundtrip<T>(item: T)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let mut codec = Codec::<T, T>::default();
        let mut buf = BytesMut::new();
        encode_frame(&item, &mut buf, codec.max_frame_bytes()).unwrap();
        let decoded = codec.decode_eof(&mut buf).unwrap().unwrap();
        assert_eq!(decoded, item);
        assert!(buf.is_empty());
    }

    proptest! {
        #[test]
        fn client_frames_roundtrip(client: u64, seq: u64, op in arb_op(), version: u32) {
            roundtrip(ClientFrame::Hello(ClientHello { version }));
            roundtrip(ClientFrame::Request(Request { client, seq, op }));
        }

        #[test]
        fn server_frames_roundtrip(seq: u64, v in arb_bytes(), len: u64, err in arb_error(), node: u64) {
            roundtrip(ServerFrame::Welcome { version: 1, node, max_request_bytes: node });
            roundtrip(ServerFrame::Reply(Reply { seq, result: Ok(Response::Value(v)) }));
            roundtrip(ServerFrame::Reply(Reply { seq, result: Ok(Response::Len(len)) }));
            roundtrip(ServerFrame::Reply(Reply { seq, result: Err(err.clone()) }));
            roundtrip(ServerFrame::Goodbye(err));
        }

        #[test]
        fn peer_frames_roundtrip(from: u64, to: u64, epoch: u64, msg in arb_peer_msg(), reason in ".*") {
            roundtrip(PeerFrame::Hello(PeerHello { version: 1, node: from }));
            roundtrip(PeerFrame::Msg(Envelope { from, to, epoch, msg }));
            roundtrip(PeerFrame::Refused(reason));
        }

        /// Any byte string fed to any decoder yields frames or a typed error, never a panic,
        /// and never a frame larger than the limit.
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            fn feed<T: DeserializeOwned>(data: &[u8]) {
                let mut codec = Codec::<T, ()>::new(256);
                let mut buf = BytesMut::from(data);
                while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
            }
            feed::<ClientFrame>(&data);
            feed::<ServerFrame>(&data);
            feed::<PeerFrame>(&data);
        }

        /// A valid frame cut anywhere is either incomplete (None) or, at end of stream,
        /// reported as truncated.
        #[test]
        fn truncated_frames_are_reported(client: u64, seq: u64, op in arb_op(), cut in 0usize..1000) {
            let frame = to_frame(&ClientFrame::Request(Request { client, seq, op }));
            let cut = cut % frame.len();
            let mut codec = Codec::<ClientFrame, ()>::default();
            let mut buf = BytesMut::from(&frame[..cut]);
            prop_assert!(codec.decode(&mut buf).unwrap().is_none());
            let eof = codec.decode_eof(&mut buf);
            if cut == 0 {
                prop_assert!(eof.unwrap().is_none());
            } else {
                let is_truncated = matches!(eof, Err(CodecError::Truncated { .. }));
                prop_assert!(is_truncated);
            }
        }
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut codec = Codec::<ClientFrame, ()>::new(1024);
        let mut buf = BytesMut::new();
        buf.put_u32(1 << 30);
        buf.put_slice(b"abc");
        match codec.decode(&mut buf) {
            Err(CodecError::FrameTooLarge { len, max }) => {
                assert_eq!((len, max), (1 << 30, 1024));
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(buf.capacity() < 1 << 20, "must not reserve the announced size");
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let mut codec = Codec::<(), ClientFrame>::new(16);
        let mut buf = BytesMut::from(&b"xy"[..]);
        let big =
            ClientFrame::Request(Request { client: 1, seq: 1, op: Op::Set(vec![7; 64].into()) });
        assert!(matches!(codec.encode(big, &mut buf), Err(CodecError::FrameTooLarge { .. })));
        assert_eq!(&buf[..], b"xy", "buffer left as it was");
    }

    #[test]
    fn wire_bytes_of_a_hello_are_stable() {
        // Hello layouts must never change: they are how versions recognise each other.
        assert_eq!(to_frame(&ClientFrame::Hello(ClientHello { version: 1 })), [0, 0, 0, 2, 0, 1]);
        assert_eq!(
            to_frame(&PeerFrame::Hello(PeerHello { version: 1, node: 3 })),
            [0, 0, 0, 3, 0, 1, 3]
        );
    }
}
