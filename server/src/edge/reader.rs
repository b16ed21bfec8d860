//! Reading frames from a stranger against deadlines and a memory budget.
//!
//! A connection may wait as long as it likes *between* frames only up to the idle timeout;
//! once the first byte of a frame has arrived, the rest must follow at
//! [`MIN_BYTES_PER_SEC`] (after [`FRAME_GRACE`]), and its bytes are taken from the node's
//! [`RequestBudget`] before they are buffered. So memory held by partial requests is
//! bounded by the budget, not by connections × frame size, and a connection that trickles
//! is closed instead of holding budget and a slot for ever.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout_at;

use super::slots::{Phase, Slot};

/// Time a frame gets on top of what its size needs at the minimum rate.
pub const FRAME_GRACE: Duration = Duration::from_secs(10);

/// The slowest a started frame may arrive: a 1 MiB value over a link this slow still makes
/// it in 14 s, and a connection that trickles slower is a slow-loris, not a client.
pub const MIN_BYTES_PER_SEC: u64 = 256 << 10;

/// Longest a frame waits for budget before the client is told the node is busy.
pub const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// Frames up to this size never wait behind large ones: large frames may take the budget
/// only up to `1 - 1/SMALL_RESERVE_SHARE` of it.
pub const SMALL_FRAME_BYTES: usize = 64 << 10;
const SMALL_RESERVE_SHARE: usize = 8;

const HEADER_BYTES: usize = 4;

/// Bytes that requests being read may hold across all connections of a node.
#[derive(Clone)]
pub struct RequestBudget {
    bytes: usize,
    all: Arc<Semaphore>,
    large: Arc<Semaphore>,
}

/// Part of the budget held by one frame until its request is handed to the engine.
#[derive(Debug)]
pub struct BudgetPermit {
    _all: OwnedSemaphorePermit,
    _large: Option<OwnedSemaphorePermit>,
}

impl RequestBudget {
    /// A budget of `bytes`; `None` if a frame of `max_frame_bytes` could never fit in the
    /// part large frames may take.
    pub fn new(bytes: usize, max_frame_bytes: usize) -> Option<Self> {
        let large = Self::large_share(bytes);
        (large >= max_frame_bytes && bytes <= u32::MAX as usize).then(|| Self {
            bytes,
            all: Arc::new(Semaphore::new(bytes)),
            large: Arc::new(Semaphore::new(large)),
        })
    }

    /// What frames over [`SMALL_FRAME_BYTES`] may hold together.
    pub fn large_share(bytes: usize) -> usize {
        bytes - bytes / SMALL_RESERVE_SHARE
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `len` bytes, waiting until `until`; `None` if they did not come free in time.
    async fn take(&self, len: usize, until: tokio::time::Instant) -> Option<BudgetPermit> {
        let n = len as u32;
        let large = if len > SMALL_FRAME_BYTES {
            Some(timeout_at(until, self.large.clone().acquire_many_owned(n)).await.ok()?.ok()?)
        } else {
            None
        };
        let all = timeout_at(until, self.all.clone().acquire_many_owned(n)).await.ok()?.ok()?;
        Some(BudgetPermit { _all: all, _large: large })
    }
}

/// Why no frame came.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed between frames: the normal end.
    #[error("closed")]
    Closed,
    #[error("sent nothing for {0:?}")]
    Idle(Duration),
    #[error(
        "sent {got} of a {len}-byte frame in {after:?}, slower than {MIN_BYTES_PER_SEC} bytes/s"
    )]
    TooSlow { len: usize, got: usize, after: Duration },
    #[error(
        "frame of {len} bytes exceeds the maximum of {max} bytes (--max-frame-bytes; \
         a first frame, the hello, may have 1 KiB)"
    )]
    TooLarge { len: usize, max: usize },
    #[error(
        "a {len}-byte request found the node's request memory budget ({budget} bytes, \
         --request-memory-bytes) in use by other connections for {BUDGET_WAIT:?}"
    )]
    Busy { len: usize, budget: usize },
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Reads length-prefixed postcard frames of type `T`. Cancel-safe: bytes, the frame's start
/// and its budget are kept in the reader, so a `select!` may drop [`FrameReader::next`].
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_frame_bytes: usize,
    budget: RequestBudget,
    slot: Slot,
    opened: bool,
    started: Option<Instant>,
    permit: Option<BudgetPermit>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, max_frame_bytes: usize, budget: RequestBudget, slot: Slot) -> Self {
        let buf = BytesMut::with_capacity(8 << 10);
        Self { io, buf, max_frame_bytes, budget, slot, opened: false, started: None, permit: None }
    }

    /// The hello went through: from now on frames may be up to `max_frame_bytes` and the
    /// slot is idle or busy, no longer opening.
    pub fn mark_open(&mut self, max_frame_bytes: usize) {
        self.opened = true;
        self.max_frame_bytes = max_frame_bytes;
        self.slot.set_phase(Phase::Idle);
    }

    /// With nothing in flight, the connection is idle unless a frame has started.
    pub fn set_in_flight(&self, in_flight: bool) {
        if self.opened && self.started.is_none() {
            self.slot.set_phase(if in_flight { Phase::Busy } else { Phase::Idle });
        }
    }

    /// The next frame, with the budget it holds (drop it once the request is handed on).
    /// `wait`: how long the connection may stay silent before the frame starts (`None`: no
    /// limit, because requests are in flight).
    pub async fn next<T: DeserializeOwned>(
        &mut self,
        wait: Option<Duration>,
    ) -> Result<(T, BudgetPermit), ReadError> {
        let started = match self.started {
            Some(started) => started,
            None => self.first_byte(wait).await?,
        };
        let header_until = tokio::time::Instant::from_std(started + FRAME_GRACE);
        while self.buf.len() < HEADER_BYTES {
            self.fill(HEADER_BYTES, header_until, started).await?;
        }
        let len = u32::from_be_bytes(self.buf[..HEADER_BYTES].try_into().expect("4 bytes"));
        let len = len as usize;
        if len > self.max_frame_bytes {
            return Err(ReadError::TooLarge { len, max: self.max_frame_bytes });
        }
        if self.permit.is_none() {
            let until = tokio::time::Instant::now() + BUDGET_WAIT;
            let budget = self.budget.bytes();
            let permit = self.budget.take(len, until).await;
            self.permit = Some(permit.ok_or(ReadError::Busy { len, budget })?);
        }
        let needs = Duration::from_secs_f64(len as f64 / MIN_BYTES_PER_SEC as f64);
        let body_until = tokio::time::Instant::from_std(started + FRAME_GRACE + needs);
        self.buf.reserve((HEADER_BYTES + len).saturating_sub(self.buf.len()));
        while self.buf.len() < HEADER_BYTES + len {
            self.fill(HEADER_BYTES + len, body_until, started).await?;
        }
        self.buf.advance(HEADER_BYTES);
        let body = self.buf.split_to(len);
        self.started = None;
        let permit = self.permit.take().expect("taken above");
        let frame = postcard::from_bytes(&body).map_err(|e| ReadError::Malformed(e.to_string()))?;
        Ok((frame, permit))
    }

    /// Waits for the first byte of a frame (or finds it buffered) and marks the frame started.
    async fn first_byte(&mut self, wait: Option<Duration>) -> Result<Instant, ReadError> {
        if self.buf.is_empty() {
            let read = self.io.read_buf(&mut self.buf);
            let n = match wait {
                Some(wait) => {
                    tokio::time::timeout(wait, read).await.map_err(|_| ReadError::Idle(wait))??
                }
                None => read.await?,
            };
            if n == 0 {
                return Err(ReadError::Closed);
            }
        }
        let now = Instant::now();
        self.started = Some(now);
        if self.opened {
            self.slot.set_phase(Phase::Busy);
        }
        Ok(now)
    }

    async fn fill(
        &mut self,
        len: usize,
        until: tokio::time::Instant,
        started: Instant,
    ) -> Result<(), ReadError> {
        let read = timeout_at(until, self.io.read_buf(&mut self.buf)).await;
        let slow = || ReadError::TooSlow {
            len: len - HEADER_BYTES.min(len),
            got: self.buf.len().saturating_sub(HEADER_BYTES),
            after: started.elapsed(),
        };
        match read {
            Err(_) => Err(slow()),
            Ok(Ok(0)) => Err(ReadError::Truncated { buffered: self.buf.len() }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::slots::{Admission, Slots};
    use tokio::io::AsyncWriteExt;

    fn slot() -> Slot {
        match Slots::new(4).admit() {
            Admission::Admitted(slot) => slot,
            _ => unreachable!(),
        }
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let encoded = postcard::to_stdvec(&body.to_vec()).unwrap();
        let mut out = (encoded.len() as u32).to_be_bytes().to_vec();
        out.extend(encoded);
        out
    }

    #[test]
    fn a_budget_too_small_for_one_frame_is_refused() {
        assert!(RequestBudget::new(16 << 20, 16 << 20).is_none());
        assert!(RequestBudget::new(32 << 20, 16 << 20).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn frames_over_the_budget_wait_then_are_busy() {
        let budget = RequestBudget::new(4 << 20, 2 << 20).unwrap();
        let held = budget.take(3 << 20, tokio::time::Instant::now() + BUDGET_WAIT).await;
        assert!(held.is_some());
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let mut reader = FrameReader::new(rx, 2 << 20, budget.clone(), slot());
        tx.write_all(&frame(&vec![7; 1 << 20])[..100]).await.unwrap();
        let err = reader.next::<Vec<u8>>(None).await.unwrap_err();
        assert!(matches!(err, ReadError::Busy { .. }), "{err}");
        drop(held);
        // Small frames keep their reserve even while large ones hold the rest.
        let mut reader = FrameReader::new(tokio::io::empty(), 2 << 20, budget, slot());
        assert!(matches!(
            reader.next::<Vec<u8>>(Some(Duration::from_secs(1))).await,
            Err(ReadError::Closed)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_frame_is_cut_off_and_a_silent_connection_times_out() {
        let budget = RequestBudget::new(32 << 20, 16 << 20).unwrap();
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let mut reader = FrameReader::new(rx, 16 << 20, budget.clone(), slot());
        let idle = Duration::from_secs(30);
        assert!(matches!(reader.next::<Vec<u8>>(Some(idle)).await, Err(ReadError::Idle(_))));
        let whole = frame(b"hello");
        tx.write_all(&whole).await.unwrap();
        assert_eq!(reader.next::<Vec<u8>>(Some(idle)).await.unwrap().0, b"hello");
        tx.write_all(&frame(&vec![1; 100_000])[..10]).await.unwrap();
        let err = reader.next::<Vec<u8>>(Some(idle)).await.unwrap_err();
        assert!(matches!(err, ReadError::TooSlow { got: 6, .. }), "{err}");
    }
}
