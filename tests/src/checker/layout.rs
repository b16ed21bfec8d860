//! From strings back to the writes that made them.
//!
//! [`WriteIndex`] maps every token to the write that carries it; [`parse`] turns a string
//! (a replica's final string or a read value) into its [`Layout`]: the sequence of writes
//! whose values it is made of, with the byte offset where each one ends. Anything that does
//! not fit (bytes that are not tokens, unknown tokens, a write that shows up twice or only in
//! part, a `set` that is not first) is reported, and a string that does not fit is not used
//! for further checks, so that one corruption does not cascade into many reports.

use std::collections::HashMap;

use super::anomaly::{preview, token_text, Anomaly, Location, Source};
use super::history::OpIndex;
use super::ops::{NormOp, Sink};
use super::token::{parse_token, tokenize, tokens, TokenId, Tokens};

/// Which write each token belongs to.
pub(crate) struct WriteIndex {
    /// Token to (op, position of the token within the op's value).
    by_token: HashMap<TokenId, (OpIndex, usize)>,
    /// Number of tokens in each op's value (0 for reads and unindexed ops).
    token_count: Vec<usize>,
}

impl WriteIndex {
    /// Indexes the writes of a history. Fails, saying why, when the direct checks do not
    /// apply: some write that may take effect has a value that is not a non-empty sequence
    /// of tokens, or two such writes share a token. A `Failed` write may repeat the exact
    /// value of another write (a retry of a refused request); its tokens then name the other.
    pub fn build(ops: &[NormOp<'_>]) -> Result<Self, String> {
        let mut index = Self { by_token: HashMap::new(), token_count: vec![0; ops.len()] };
        for (op, norm) in ops.iter().enumerate().filter(|(_, n)| !n.is_failed()) {
            let Some(value) = norm.written() else { continue };
            let spans =
                tokenize(value).ok().filter(|spans| !spans.is_empty()).ok_or_else(|| {
                    format!("op #{op} writes {}, not a sequence of tokens", preview(value))
                })?;
            for (position, span) in spans.iter().enumerate() {
                if let Some((other, _)) = index.by_token.insert(span.id, (op, position)) {
                    let token = token_text(&value[span.start..span.end]);
                    return Err(format!("token {token} is written by both #{other} and #{op}"));
                }
            }
            index.token_count[op] = spans.len();
        }
        for (op, norm) in ops.iter().enumerate().filter(|(_, n)| n.is_failed()) {
            index.add_failed(ops, op, norm)?;
        }
        Ok(index)
    }

    fn add_failed(
        &mut self,
        ops: &[NormOp<'_>],
        op: OpIndex,
        norm: &NormOp<'_>,
    ) -> Result<(), String> {
        let Some(value) = norm.written() else { return Ok(()) };
        // A failed write with a value that is not made of tokens cannot be recognised, but
        // its bytes showing up are still caught as a malformed string.
        let Ok(spans) = tokenize(value) else { return Ok(()) };
        let Some(first) = spans.first() else { return Ok(()) };
        if let Some(&(other, _)) = self.by_token.get(&first.id) {
            if ops[other].written() == Some(value) {
                return Ok(());
            }
            return Err(format!("failed op #{op} shares a token with #{other} but not its value"));
        }
        for (position, span) in spans.iter().enumerate() {
            if self.by_token.insert(span.id, (op, position)).is_some() {
                return Err(format!("failed op #{op} shares a token with another write"));
            }
        }
        self.token_count[op] = spans.len();
        Ok(())
    }

    /// The write whose value starts `bytes`: `Ok(None)` for the empty string, `Err` when
    /// the start is not a known token.
    pub fn first_op(&self, bytes: &[u8]) -> Result<Option<OpIndex>, ()> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let (id, _) = parse_token(bytes).ok_or(())?;
        self.by_token.get(&id).map(|&(op, _)| Some(op)).ok_or(())
    }
}

/// What the reads and the final string reveal about a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// No read and not the final string contains its tokens.
    Never,
    /// Only the final string contains them.
    ByFinal,
    /// Some `Ok` read contains them; the earliest such read completed at this time, so the
    /// write took effect before then.
    By(u64),
}

/// For every op, whether and how early its tokens were seen. Reading stops at the first
/// byte of a string that is not a token; unknown tokens are ignored (the direct checks
/// report them).
pub(crate) fn observations(
    ops: &[NormOp<'_>],
    index: &WriteIndex,
    final_string: Option<&[u8]>,
) -> Vec<Seen> {
    let mut seen = vec![Seen::Never; ops.len()];
    let written_by =
        |bytes| tokens(bytes).map_while(Result::ok).filter_map(|span| index.by_token.get(&span.id));
    for &(op, _) in written_by(final_string.unwrap_or_default()) {
        seen[op] = Seen::ByFinal;
    }
    for read in ops.iter().filter(|op| op.read_value().is_some()) {
        for &(op, _) in written_by(read.read_value().unwrap_or_default()) {
            seen[op] = match seen[op] {
                Seen::By(time) if time <= read.complete => Seen::By(time),
                _ => Seen::By(read.complete),
            };
        }
    }
    seen
}

/// One write within a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seg {
    pub op: OpIndex,
    /// Byte offset just after the write's value.
    pub end: usize,
}

/// A string explained as a sequence of writes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Layout {
    /// The `set` whose value starts the string; `None` when it starts with an append (or is
    /// empty), i.e. no `set` had taken effect.
    pub base: Option<OpIndex>,
    pub segs: Vec<Seg>,
}

impl Layout {
    /// Byte offset where segment `i` starts.
    pub fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.segs[i - 1].end
        }
    }
}

/// The first token of `op`'s value, for reports.
pub(crate) fn first_token(op: &NormOp<'_>) -> String {
    let value = op.written().unwrap_or_default();
    let len = parse_token(value).map_or(value.len(), |(_, len)| len);
    token_text(&value[..len])
}

/// Explains `bytes` as a sequence of writes, reporting everything that does not fit.
/// Returns `None` when the string cannot be explained (the problems are in `sink`).
pub(crate) fn parse(
    bytes: &[u8],
    source: Source,
    index: &WriteIndex,
    ops: &[NormOp<'_>],
    sink: &mut Sink<'_>,
) -> Option<Layout> {
    let at = |offset| Location { source, offset };
    let mut layout = Layout::default();
    let mut first_seen: HashMap<OpIndex, usize> = HashMap::new();
    let mut broken = false;
    let mut spans = tokens(bytes);
    while let Some(span) = spans.next() {
        let span = match span {
            Ok(span) => span,
            Err(malformed) => {
                sink.push(Anomaly::MalformedString { at: at(malformed.offset) });
                return None;
            }
        };
        let Some(&(op, position)) = index.by_token.get(&span.id) else {
            let token = token_text(&bytes[span.start..span.end]);
            sink.push(Anomaly::PhantomToken { token, at: at(span.start) });
            broken = true;
            continue;
        };
        // A write's value starts with its first token and the rest must follow in order.
        let end = match (position, rest_of_value(&mut spans, index, op)) {
            (0, Some(end)) => end.unwrap_or(span.end),
            _ => {
                sink.push(Anomaly::TornWrite { op: sink.op(op), at: at(span.start) });
                return None;
            }
        };
        if let Some(&first) = first_seen.get(&op) {
            let (first, second) = (at(first), at(span.start));
            let token = first_token(&ops[op]);
            sink.push(Anomaly::DuplicateToken { token, op: sink.op(op), first, second });
            broken = true;
            continue;
        }
        first_seen.insert(op, span.start);
        if ops[op].is_set() && !layout.segs.is_empty() {
            sink.push(Anomaly::MisplacedSet { op: sink.op(op), at: at(span.start) });
            broken = true;
        }
        if ops[op].is_failed() {
            let token = first_token(&ops[op]);
            sink.push(Anomaly::FailedWriteVisible { op: sink.op(op), token, at: at(span.start) });
        }
        layout.segs.push(Seg { op, end });
    }
    layout.base = layout.segs.first().map(|seg| seg.op).filter(|&op| ops[op].is_set());
    (!broken).then_some(layout)
}

/// Consumes the tokens after the first one of `op`'s value: `Some(Some(end))` when they
/// all follow in order, `Some(None)` when the value is a single token, `None` when torn.
fn rest_of_value(spans: &mut Tokens<'_>, index: &WriteIndex, op: OpIndex) -> Option<Option<usize>> {
    let mut end = None;
    for expected in 1..index.token_count[op] {
        match spans.next() {
            Some(Ok(next)) if index.by_token.get(&next.id) == Some(&(op, expected)) => {
                end = Some(next.end);
            }
            _ => return None,
        }
    }
    Some(end)
}
