//! The replicated string, kept in pieces of about [`PIECE_BYTES`] that never change once
//! full, so that a snapshot or a `get` shares them instead of copying the string on the
//! engine's thread. (A node stalled 1.4 s copying a 300 MB string for a snapshot; all the
//! while it sent no heartbeat.)

use bytes::{Bytes, BytesMut};
use strstore_protocol::Chunks;

/// Size at which the piece being appended to is frozen and a new one started. Small enough
/// that copying the open piece is cheap, large enough that a 1 GiB string is 1024 pieces.
pub const PIECE_BYTES: usize = 1 << 20;

/// The string: frozen pieces plus the open piece appends go to.
#[derive(Clone, Debug, Default)]
pub struct Text {
    frozen: Vec<Bytes>,
    open: BytesMut,
    len: usize,
}

impl Text {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn append(&mut self, bytes: &[u8]) {
        if self.open.capacity() == 0 {
            self.open.reserve(PIECE_BYTES.max(bytes.len()));
        }
        self.open.extend_from_slice(bytes);
        self.len += bytes.len();
        if self.open.len() >= PIECE_BYTES {
            self.frozen.push(std::mem::take(&mut self.open).freeze());
        }
    }

    pub fn set(&mut self, bytes: &[u8]) {
        *self = Self::default();
        self.append(bytes);
    }

    /// The string as it is now, sharing the frozen pieces; costs a copy of the open piece
    /// only (under [`PIECE_BYTES`] plus the last append).
    pub fn share(&self) -> Chunks {
        let open = Bytes::copy_from_slice(&self.open);
        Chunks::from_pieces(self.frozen.iter().cloned().chain([open]))
    }

    /// Takes over a shared string (from a snapshot) without copying it.
    pub fn from_chunks(chunks: Chunks) -> Self {
        let len = chunks.len();
        Self { frozen: chunks.into_pieces(), open: BytesMut::new(), len }
    }

    /// Every piece, in order.
    pub fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        self.frozen.iter().map(|p| &p[..]).chain([&self.open[..]]).filter(|p| !p.is_empty())
    }

    /// A copy of the bytes of `start..end`, clamped to the string.
    pub fn slice(&self, start: usize, end: usize) -> Vec<u8> {
        let end = end.min(self.len);
        let start = start.min(end);
        let mut out = Vec::with_capacity(end - start);
        let mut at = 0;
        for piece in self.pieces() {
            let (from, to) = (start.max(at), end.min(at + piece.len()));
            if from < to {
                out.extend_from_slice(&piece[from - at..to - at]);
            }
            at += piece.len();
        }
        out
    }

    /// The whole string in one buffer (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        self.slice(0, self.len)
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.share() == other.share()
    }
}

impl Eq for Text {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_fill_pieces_and_freeze_them() {
        let mut t = Text::default();
        let block = vec![7u8; PIECE_BYTES / 2 + 1];
        for _ in 0..5 {
            t.append(&block);
        }
        assert_eq!(t.len(), 5 * block.len());
        assert_eq!(t.frozen.len(), 2, "two full pieces, the fifth block still open");
        assert_eq!(t.to_vec(), vec![7u8; 5 * block.len()]);
        t.set(b"xy");
        assert_eq!((t.len(), t.to_vec(), t.frozen.len()), (2, b"xy".to_vec(), 0));
    }

    /// The point of the pieces: a snapshot of a large string points into the string's own
    /// memory, so taking it costs no copy of the string.
    #[test]
    fn sharing_a_large_string_copies_only_the_open_piece() {
        let mut t = Text::default();
        for i in 0..40u8 {
            t.append(&[i; 100_000]);
        }
        let shared = t.share();
        assert_eq!(shared.len(), 4_000_000);
        let frozen_bytes: usize = t.frozen.iter().map(Bytes::len).sum();
        assert!(frozen_bytes >= 3 * PIECE_BYTES, "{frozen_bytes}");
        for (mine, theirs) in t.frozen.iter().zip(shared.pieces()) {
            assert_eq!(mine.as_ptr(), theirs.as_ptr(), "a frozen piece was copied");
        }
        assert_eq!(shared.to_bytes(), Bytes::from(t.to_vec()));
        let back = Text::from_chunks(shared);
        assert_eq!(back, t);
        assert_eq!(back.to_vec(), t.to_vec());
        assert_eq!(t.slice(99_999, 100_002), vec![0, 1, 1]);
        assert_eq!(t.slice(3_999_999, 5_000_000), vec![39]);
    }
}
