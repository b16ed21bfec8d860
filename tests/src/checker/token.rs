//! The token format that makes the direct checks possible.
//!
//! Generators write values made of tokens, `<c{client}-{n}>` in canonical decimal (no leading
//! zeros), e.g. `<c3-17>`; use [`token`] to make them. Every token is used by one write only,
//! so a token found in a string names the op that wrote it. The brackets make tokens
//! self-delimiting: a string of tokens splits back into them without any outside knowledge,
//! and any byte that does not fit the grammar is evidence of corruption.

/// The identity of a token: the client that made it and that client's counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId {
    /// The client id written after `<c`.
    pub client: u64,
    /// The per-client counter written after `-`.
    pub n: u64,
}

/// One token found in a string, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Which token.
    pub id: TokenId,
    /// Byte offset of its `<`.
    pub start: usize,
    /// Byte offset just after its `>`.
    pub end: usize,
}

/// The bytes at `offset` do not start a well-formed token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no well-formed token at byte {offset}")]
pub struct Malformed {
    /// Where the first bad byte is.
    pub offset: usize,
}

/// The token a generator must use for `client`'s `n`-th write.
pub fn token(client: u64, n: u64) -> Vec<u8> {
    format!("<c{client}-{n}>").into_bytes()
}

/// Parses the token at the start of `bytes`, returning it and its length in bytes.
pub fn parse_token(bytes: &[u8]) -> Option<(TokenId, usize)> {
    let rest = bytes.strip_prefix(b"<c")?;
    let (client, client_len) = parse_number(rest)?;
    let rest = rest[client_len..].strip_prefix(b"-")?;
    let (n, n_len) = parse_number(rest)?;
    if rest.get(n_len) != Some(&b'>') {
        return None;
    }
    Some((TokenId { client, n }, 2 + client_len + 1 + n_len + 1))
}

/// Splits a whole string into tokens; fails at the first byte that does not fit.
pub fn tokenize(bytes: &[u8]) -> Result<Vec<Span>, Malformed> {
    tokens(bytes).collect()
}

/// Iterates over the tokens of a string without allocating; yields one error and then stops
/// at the first byte that does not fit.
pub fn tokens(bytes: &[u8]) -> Tokens<'_> {
    Tokens { bytes, offset: 0, failed: false }
}

/// Iterator returned by [`tokens`].
#[derive(Clone, Debug)]
pub struct Tokens<'a> {
    bytes: &'a [u8],
    offset: usize,
    failed: bool,
}

impl Iterator for Tokens<'_> {
    type Item = Result<Span, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset == self.bytes.len() {
            return None;
        }
        let start = self.offset;
        match parse_token(&self.bytes[start..]) {
            Some((id, len)) => {
                self.offset += len;
                Some(Ok(Span { id, start, end: self.offset }))
            }
            None => {
                self.failed = true;
                Some(Err(Malformed { offset: start }))
            }
        }
    }
}

/// Parses a canonical decimal number (no sign, no leading zeros, fits in u64).
fn parse_number(bytes: &[u8]) -> Option<(u64, usize)> {
    let len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || (len > 1 && bytes[0] == b'0') {
        return None;
    }
    let mut value: u64 = 0;
    for &digit in &bytes[..len] {
        value = value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
    }
    Some((value, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips() {
        for (client, n) in [(0, 0), (3, 17), (u64::MAX, u64::MAX)] {
            let bytes = token(client, n);
            assert_eq!(parse_token(&bytes), Some((TokenId { client, n }, bytes.len())));
        }
    }

    #[test]
    fn tokenize_splits_concatenations() {
        let mut s = token(1, 2);
        s.extend(token(30, 4));
        let spans = tokenize(&s).unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[1].id, TokenId { client: 30, n: 4 });
        assert_eq!((spans[1].start, spans[1].end), (6, s.len()));
        assert_eq!(tokenize(b""), Ok(vec![]));
    }

    #[test]
    fn tokenize_rejects_anything_else() {
        for (bad, offset) in [
            (&b"<c1-2"[..], 0),
            (b"<c1-2>x", 6),
            (b"<c01-2>", 0),
            (b"<c1-2><c-3>", 6),
            (b"<c99999999999999999999-1>", 0),
            (b"<c1-2>>", 6),
        ] {
            assert_eq!(tokenize(bad), Err(Malformed { offset }), "{}", bad.escape_ascii());
        }
    }
}
