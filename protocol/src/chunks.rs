//! A byte string held as a list of shared pieces, so that taking a copy of a large string
//! costs a reference count per piece instead of a copy of every byte.
//!
//! On the wire (and on disk) it is one postcard byte string, exactly as a `Bytes` would be:
//! where the pieces are cut is never visible outside the process that holds them.

use std::fmt;

use bytes::{Bytes, BytesMut};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable byte string in pieces.
#[derive(Clone, Default)]
pub struct Chunks {
    pieces: Vec<Bytes>,
    len: usize,
}

impl Chunks {
    /// Builds the string from its pieces, in order (empty pieces are dropped).
    pub fn from_pieces(pieces: impl IntoIterator<Item = Bytes>) -> Self {
        let pieces: Vec<Bytes> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        let len = pieces.iter().map(Bytes::len).sum();
        Self { pieces, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order.
    pub fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    /// Hands over the pieces.
    pub fn into_pieces(self) -> Vec<Bytes> {
        self.pieces
    }

    /// The bytes of `start..end` (clamped to the string) in one piece. Copies them, unless
    /// they lie within one piece.
    pub fn slice(&self, start: usize, end: usize) -> Bytes {
        let end = end.min(self.len);
        let start = start.min(end);
        let mut out = BytesMut::new();
        let mut at = 0;
        for piece in &self.pieces {
            let (from, to) = (start.max(at), end.min(at + piece.len()));
            if from < to {
                let part = piece.slice(from - at..to - at);
                if out.is_empty() && to == end {
                    return part;
                }
                out.extend_from_slice(&part);
            }
            at += piece.len();
            if at >= end {
                break;
            }
        }
        out.freeze()
    }

    /// The whole string in one piece (a copy, unless it is one piece already).
    pub fn to_bytes(&self) -> Bytes {
        self.slice(0, self.len)
    }

    /// Every byte, in order.
    pub fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.pieces.iter().flat_map(|p| p.iter().copied())
    }
}

impl From<Bytes> for Chunks {
    fn from(bytes: Bytes) -> Self {
        Self::from_pieces([bytes])
    }
}

impl From<&[u8]> for Chunks {
    fn from(bytes: &[u8]) -> Self {
        Self::from(Bytes::copy_from_slice(bytes))
    }
}

impl PartialEq for Chunks {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.bytes().eq(other.bytes())
    }
}

impl Eq for Chunks {}

impl fmt::Debug for Chunks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = self.slice(0, 32);
        write!(f, "Chunks({} bytes in {} pieces: {head:?}..)", self.len, self.pieces.len())
    }
}

impl Serialize for Chunks {
    /// Serializers take a byte string in one slice, so several pieces are joined first: the
    /// encoder (the log's snapshot thread, a peer link's blocking task) pays that copy, not
    /// the engine that took the snapshot.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.pieces.as_slice() {
            [] => serializer.serialize_bytes(&[]),
            [one] => serializer.serialize_bytes(one),
            _ => serializer.serialize_bytes(&self.to_bytes()),
        }
    }
}

impl<'de> Deserialize<'de> for Chunks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_byte_buf(ChunksVisitor)
    }
}

struct ChunksVisitor;

impl<'de> Visitor<'de> for ChunksVisitor {
    type Value = Chunks;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Chunks, E> {
        Ok(Chunks::from(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Chunks, E> {
        Ok(Chunks::from(Bytes::from(v)))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Chunks, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        Ok(Chunks::from(Bytes::from(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(s: &[u8], at: &[usize]) -> Chunks {
        let mut pieces = Vec::new();
        let mut from = 0;
        for &to in at.iter().chain([s.len()].iter()) {
            pieces.push(Bytes::copy_from_slice(&s[from..to]));
            from = to;
        }
        Chunks::from_pieces(pieces)
    }

    #[test]
    fn encodes_exactly_as_one_byte_string_however_it_is_cut() {
        let s = b"hello, replicated world";
        let whole = postcard::to_allocvec(&Bytes::from_static(s)).unwrap();
        for at in [&[][..], &[5], &[1, 2, 3], &[0, 22]] {
            let chunks = cut(s, at);
            assert_eq!(postcard::to_allocvec(&chunks).unwrap(), whole, "cut at {at:?}");
            let back: Chunks = postcard::from_bytes(&whole).unwrap();
            assert_eq!(back, chunks);
            assert_eq!(back.to_bytes(), Bytes::from_static(s));
        }
    }

    #[test]
    fn slices_across_pieces() {
        let s = b"abcdefghij";
        let chunks = cut(s, &[3, 4, 8]);
        for start in 0..=12 {
            for end in 0..=12 {
                let want = &s[start.min(end).min(10)..end.min(10)];
                assert_eq!(&chunks.slice(start, end)[..], want, "{start}..{end}");
            }
        }
    }

    #[test]
    fn a_slice_within_one_piece_shares_its_memory() {
        let chunks = cut(b"abcdefghij", &[3, 8]);
        let part = chunks.slice(4, 6);
        let piece = &chunks.pieces()[1];
        assert_eq!(part.as_ptr(), piece[1..].as_ptr());
    }
}
