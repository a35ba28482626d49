//! Publishing a decision to every worker without a lock that can tear or
//! stick.
//!
//! The decider (one worker per interval) writes an agent's decision — a
//! weight per peer and a few fields — into shared memory that every worker
//! reads on its next request. The protocol is a double buffer with stamped
//! buffers (a sequence lock made correct for the C++/Rust memory model, as
//! in Boehm, "Can seqlocks get along with programming language memory
//! models?", 2012):
//!
//! ```text
//! writer (epoch e, buffer b = e mod 2)      reader
//!   stamp[b] ← WRITING          (relaxed)     e ← published      (acquire)
//!   fence(release)                            s₁ ← stamp[e mod 2] (acquire); s₁ = e or retry
//!   data[b] ← …                 (relaxed)     v ← data[e mod 2]   (relaxed)
//!   stamp[b] ← e                (release)     fence(acquire)
//!   published ← max(published, e) (release)   s₂ ← stamp[e mod 2] (relaxed); s₂ = e or retry
//! ```
//!
//! - **No tearing.** If any data load saw a store of a later writer, the
//!   acquire fence orders that writer's `WRITING` stamp before `s₂`, so
//!   `s₂ ≠ e` and the read is retried; `s₁ = e` (acquire) makes all of
//!   writer `e`'s data visible.
//! - **No sticking.** Nothing a reader waits for can be left half done: the
//!   published buffer is never the one being written, and a writer that
//!   dies mid-write leaves `published` on the previous, intact buffer; the
//!   next writer takes the next epoch and overwrites the dead one's buffer.
//!   Reads give up after [`READ_ATTEMPTS`] and the caller keeps what it
//!   applied last.
//! - **One writer at a time** is the caller's duty: the module elects one
//!   decider per interval (a compare-and-swap on the due time) and a
//!   decision is written in microseconds, intervals are ≥ 100 ms.
//!
//! Model-checked with `loom` (`RUSTFLAGS="--cfg loom" cargo test -p
//! deep-sched-core --lib publish`), which explores every interleaving and
//! every weak-memory outcome the model allows.

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU64, Ordering};

#[cfg(not(loom))]
use core::sync::atomic::{fence, AtomicU64, Ordering};

/// A stamp no epoch takes: the buffer is being written.
const WRITING: u64 = u64::MAX;

/// How many times a reader tries before it gives up (each try is a few
/// loads; a failed try means a writer was inside the very buffer, which
/// happens at most once per interval).
pub const READ_ATTEMPTS: usize = 8;

/// The publication state of one agent. All-zero memory is a valid start:
/// epoch 0 published in buffer 0.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Publication {
    /// The last epoch handed to a writer.
    claimed: AtomicU64,
    /// The newest completely written epoch (0: none yet).
    published: AtomicU64,
    /// Per buffer, the epoch whose data it holds, or [`WRITING`].
    stamps: [AtomicU64; 2],
}

impl Publication {
    /// A fresh publication (epoch 0).
    #[cfg(not(loom))]
    pub const fn new() -> Publication {
        Publication {
            claimed: AtomicU64::new(0),
            published: AtomicU64::new(0),
            stamps: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// A fresh publication (epoch 0).
    #[cfg(loom)]
    pub fn new() -> Publication {
        Publication {
            claimed: AtomicU64::new(0),
            published: AtomicU64::new(0),
            stamps: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Writes a new decision: `write(b)` stores the data of buffer `b`
    /// (with relaxed atomic stores) and must not publish anything else.
    /// Returns the new epoch. Everything should be computed before the
    /// call: `write` only copies.
    pub fn publish(&self, write: impl FnOnce(usize)) -> u64 {
        let epoch = self.claimed.fetch_add(1, Ordering::AcqRel) + 1;
        let b = buffer_of(epoch);
        self.stamps[b].store(WRITING, Ordering::Relaxed);
        fence(Ordering::Release);
        write(b);
        self.stamps[b].store(epoch, Ordering::Release);
        self.published.fetch_max(epoch, Ordering::Release);
        epoch
    }

    /// The newest published epoch (one load: the per-request check).
    pub fn epoch(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Reads the newest decision: `read(b)` loads buffer `b` (relaxed
    /// atomic loads) and may run several times. Returns the epoch and what
    /// `read` returned, or `None` when a writer kept interfering for
    /// [`READ_ATTEMPTS`] tries (the caller keeps what it had).
    pub fn read<T>(&self, mut read: impl FnMut(usize) -> T) -> Option<(u64, T)> {
        for _ in 0..READ_ATTEMPTS {
            let epoch = self.published.load(Ordering::Acquire);
            let b = buffer_of(epoch);
            if self.stamps[b].load(Ordering::Acquire) != epoch {
                spin();
                continue;
            }
            let value = read(b);
            fence(Ordering::Acquire);
            if self.stamps[b].load(Ordering::Relaxed) == epoch {
                return Some((epoch, value));
            }
            spin();
        }
        None
    }
}

/// The buffer that holds epoch `e` (for a reader that takes the epoch from
/// [`Publication::read`] and reads more of the same buffer afterwards).
#[inline]
pub fn buffer_of(epoch: u64) -> usize {
    (epoch & 1) as usize
}

#[cfg(not(loom))]
fn spin() {
    core::hint::spin_loop();
}

#[cfg(loom)]
fn spin() {
    loom::thread::yield_now();
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU32;

    struct Shared {
        publication: Publication,
        weights: [[AtomicU32; 3]; 2],
    }

    fn shared() -> Shared {
        Shared {
            publication: Publication::new(),
            weights: Default::default(),
        }
    }

    fn write(s: &Shared, w: [u32; 3]) -> u64 {
        s.publication.publish(|b| {
            for (cell, v) in s.weights[b].iter().zip(w) {
                cell.store(v, Ordering::Relaxed);
            }
        })
    }

    fn read(s: &Shared) -> Option<(u64, [u32; 3])> {
        s.publication
            .read(|b| s.weights[b].each_ref().map(|c| c.load(Ordering::Relaxed)))
    }

    #[test]
    fn zeroed_memory_reads_as_epoch_zero() {
        let s = shared();
        assert_eq!(read(&s), Some((0, [0, 0, 0])));
        assert_eq!(s.publication.epoch(), 0);
    }

    #[test]
    fn each_publication_is_read_whole() {
        let s = shared();
        for e in 1..=5u32 {
            assert_eq!(write(&s, [e, e * 10, e * 100]), u64::from(e));
            assert_eq!(read(&s), Some((u64::from(e), [e, e * 10, e * 100])));
        }
    }

    /// A writer that dies between its stamp and its data leaves the
    /// previous decision readable, and the next writer goes on.
    #[test]
    fn a_writer_that_dies_mid_write_sticks_nothing() {
        let s = shared();
        write(&s, [1, 1, 1]);
        // The dead writer: claims epoch 2, marks buffer 0, writes half.
        let dead = s.publication.claimed.fetch_add(1, Ordering::AcqRel) + 1;
        s.publication.stamps[buffer_of(dead)].store(WRITING, Ordering::Relaxed);
        s.weights[buffer_of(dead)][0].store(99, Ordering::Relaxed);
        assert_eq!(read(&s), Some((1, [1, 1, 1])), "the previous decision");
        assert_eq!(write(&s, [3, 3, 3]), 3);
        assert_eq!(read(&s), Some((3, [3, 3, 3])));
        assert_eq!(write(&s, [4, 4, 4]), 4, "the dead one's buffer is reused");
        assert_eq!(read(&s), Some((4, [4, 4, 4])));
    }

    /// A reader that only ever meets a writer inside the buffer gives up
    /// after a bounded number of tries instead of spinning.
    #[test]
    fn a_read_that_keeps_meeting_a_writer_gives_up() {
        let s = shared();
        write(&s, [1, 1, 1]);
        s.publication.stamps[1].store(WRITING, Ordering::Relaxed);
        assert_eq!(read(&s), None);
    }

    /// Threads on a real machine: a reader never sees a mix of two
    /// decisions.
    #[test]
    fn concurrent_readers_never_see_a_torn_decision() {
        let s = std::sync::Arc::new(shared());
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for e in 1..=20_000u32 {
                    write(&s, [e, e, e]);
                }
            })
        };
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut last = 0;
                    for _ in 0..200_000 {
                        if let Some((e, w)) = read(&s) {
                            assert_eq!(w, [e as u32; 3], "torn read at epoch {e}");
                            assert!(e >= last, "epochs never go back");
                            last = e;
                        }
                    }
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicU32;
    use loom::sync::Arc;

    struct Shared {
        publication: Publication,
        weights: [[AtomicU32; 2]; 2],
    }

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            publication: Publication::new(),
            weights: [
                [AtomicU32::new(0), AtomicU32::new(0)],
                [AtomicU32::new(0), AtomicU32::new(0)],
            ],
        })
    }

    fn write(s: &Shared, v: u32) {
        s.publication.publish(|b| {
            for cell in &s.weights[b] {
                cell.store(v, Ordering::Relaxed);
            }
        });
    }

    fn read(s: &Shared) -> Option<(u64, [u32; 2])> {
        s.publication.read(|b| {
            [
                s.weights[b][0].load(Ordering::Relaxed),
                s.weights[b][1].load(Ordering::Relaxed),
            ]
        })
    }

    /// Two decisions in a row against a reader: whatever it returns is one
    /// whole decision, of the epoch it names.
    #[test]
    fn loom_reader_never_sees_a_torn_decision() {
        loom::model(|| {
            let s = shared();
            let w = {
                let s = s.clone();
                loom::thread::spawn(move || {
                    write(&s, 1);
                    write(&s, 2);
                })
            };
            if let Some((e, v)) = read(&s) {
                assert_eq!(v, [e as u32; 2], "torn or mislabelled read");
            }
            w.join().unwrap();
            assert_eq!(read(&s), Some((2, [2, 2])));
        });
    }

    /// A writer that stops after marking its buffer (it died) never makes
    /// a reader fail or see its half-written data.
    #[test]
    fn loom_a_dead_writer_sticks_nothing() {
        loom::model(|| {
            let s = shared();
            write(&s, 1);
            let dead = {
                let s = s.clone();
                loom::thread::spawn(move || {
                    let e = s.publication.claimed.fetch_add(1, Ordering::AcqRel) + 1;
                    s.publication.stamps[buffer_of(e)].store(WRITING, Ordering::Relaxed);
                    fence(Ordering::Release);
                    s.weights[buffer_of(e)][0].store(7, Ordering::Relaxed);
                })
            };
            assert_eq!(read(&s), Some((1, [1, 1])));
            dead.join().unwrap();
            assert_eq!(read(&s), Some((1, [1, 1])));
            write(&s, 3);
            assert_eq!(read(&s), Some((3, [3, 3])));
        });
    }
}
