//! The shared zone: per-peer counters and per-agent decisions that every
//! worker process reads and writes.
//!
//! One `ngx_shared_memory_add` zone holds, after nginx's slab pool header,
//! one [`AgentSlot`] per agent followed by one [`PeerSlot`] per peer of every
//! agent. Everything in it is an atomic integer, so workers never take a lock
//! to count a request; the only coordination is
//! - a compare-and-swap on [`AgentSlot::next_decision_ms`], which elects the
//!   one worker that decides in an interval, and
//! - a sequence lock around the published decision (weights, state, action),
//!   so a reader never applies half a decision.
//!
//! The zone's name carries a hash of the layout (agents, upstreams, peers):
//! a reload with the same layout reuses the zone and keeps the counters, a
//! different layout gets a fresh zone.

use core::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use deep_sched_core::counters::{PeerCounters, LATENCY_BUCKETS};

/// Cumulative counters of one peer, summed over all workers.
#[repr(C)]
pub struct CounterCells {
    pub requests: AtomicU64,
    pub in_bytes: AtomicU64,
    pub out_bytes: AtomicU64,
    pub responses: [AtomicU64; 5],
    pub failures: AtomicU64,
    pub response_msec: AtomicU64,
    pub latency_hist: [AtomicU64; LATENCY_BUCKETS],
}

impl CounterCells {
    /// Reads the cells into a plain snapshot (each cell is read atomically;
    /// the set is not a transaction, which is fine for rates over seconds).
    pub fn load(&self, inflight: u64) -> PeerCounters {
        let mut c = PeerCounters {
            requests: self.requests.load(Ordering::Relaxed),
            in_bytes: self.in_bytes.load(Ordering::Relaxed),
            out_bytes: self.out_bytes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            response_msec: self.response_msec.load(Ordering::Relaxed),
            inflight,
            ..PeerCounters::default()
        };
        for (dst, src) in c.responses.iter_mut().zip(&self.responses) {
            *dst = src.load(Ordering::Relaxed);
        }
        for (dst, src) in c.latency_hist.iter_mut().zip(&self.latency_hist) {
            *dst = src.load(Ordering::Relaxed);
        }
        c
    }

    /// Overwrites the cells with a snapshot (used for the decider's
    /// "previous" copy, which only the elected worker writes).
    pub fn store(&self, c: &PeerCounters) {
        self.requests.store(c.requests, Ordering::Relaxed);
        self.in_bytes.store(c.in_bytes, Ordering::Relaxed);
        self.out_bytes.store(c.out_bytes, Ordering::Relaxed);
        self.failures.store(c.failures, Ordering::Relaxed);
        self.response_msec.store(c.response_msec, Ordering::Relaxed);
        for (dst, src) in self.responses.iter().zip(&c.responses) {
            dst.store(*src, Ordering::Relaxed);
        }
        for (dst, src) in self.latency_hist.iter().zip(&c.latency_hist) {
            dst.store(*src, Ordering::Relaxed);
        }
    }
}

/// Everything the zone keeps about one peer.
#[repr(C)]
pub struct PeerSlot {
    /// Live cumulative counters.
    pub live: CounterCells,
    /// The snapshot taken at the last decision.
    pub prev: CounterCells,
    /// Requests now at the peer (a gauge).
    pub inflight: AtomicI64,
    /// Recent response time, ms, as `f64` bits: the peak EWMA
    /// (`deep_sched_core::choose::peak_ewma`).
    pub latency_ewma: AtomicU64,
    /// When `latency_ewma` last took a sample, `ngx_current_msec`.
    pub latency_stamp_ms: AtomicU64,
    /// Weight currently published for the peer.
    pub weight: AtomicU32,
}

impl PeerSlot {
    /// Records one finished try at this peer. Called per request: only
    /// relaxed atomic adds, no lock, no allocation. `now_ms` is nginx's
    /// cached clock.
    pub fn record(&self, outcome: &TryOutcome, now_ms: u64) {
        let c = &self.live;
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.in_bytes.fetch_add(outcome.in_bytes, Ordering::Relaxed);
        c.out_bytes.fetch_add(outcome.out_bytes, Ordering::Relaxed);
        if let Some(class) = outcome.status_class {
            c.responses[class].fetch_add(1, Ordering::Relaxed);
        }
        if outcome.failed {
            c.failures.fetch_add(1, Ordering::Relaxed);
        }
        c.response_msec
            .fetch_add(outcome.response_msec, Ordering::Relaxed);
        let bucket = deep_sched_core::counters::latency_bucket(outcome.response_msec);
        c.latency_hist[bucket].fetch_add(1, Ordering::Relaxed);
        // A racy read-modify-write is acceptable for a smoothed signal: a lost
        // update only skips one sample.
        use deep_sched_core::choose::{peak_ewma, try_latency_ms, PEAK_EWMA_TAU_MS};
        let sample = try_latency_ms(outcome.response_msec, outcome.failed);
        let old = self.latency_ewma_ms();
        let last = self.latency_stamp_ms.swap(now_ms, Ordering::Relaxed);
        let new = peak_ewma(old, now_ms.saturating_sub(last), sample, PEAK_EWMA_TAU_MS);
        self.latency_ewma.store(new.to_bits(), Ordering::Relaxed);
    }

    /// The peer's peak-EWMA latency, ms (0 before the first response).
    pub fn latency_ewma_ms(&self) -> f64 {
        f64::from_bits(self.latency_ewma.load(Ordering::Relaxed))
    }

    /// Current in-flight count, never negative.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed).max(0) as u64
    }
}

/// What the free-peer callback learned about one try.
pub struct TryOutcome {
    /// `Some(0..=4)` for 1xx..5xx, `None` when no response header arrived.
    pub status_class: Option<usize>,
    /// nginx counted the try as a failure of the peer.
    pub failed: bool,
    pub response_msec: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

/// The published decision of one agent, guarded by a sequence lock.
#[repr(C)]
pub struct AgentSlot {
    /// Monotonic ms at which the next decision is due; the worker that
    /// moves it forward decides.
    pub next_decision_ms: AtomicU64,
    /// Monotonic ms of the previous decision (for the interval length).
    pub prev_decision_ms: AtomicU64,
    /// Sequence lock: odd while a decision is being written.
    pub seq: AtomicU64,
    /// Number of decisions published (0: none yet).
    pub epoch: AtomicU64,
    /// Wall clock (ms since the epoch) of the last decision.
    pub last_decision_wall_ms: AtomicU64,
    /// State, or -1.
    pub state: AtomicI64,
    /// Action index in the policy, or -1.
    pub action: AtomicI64,
    /// bit 0: out of distribution, bit 1: explored.
    pub flags: AtomicU64,
    /// Log-likelihood of the last observation, as `f64` bits.
    pub log_likelihood: AtomicU64,
}

/// A consistent copy of an agent's published decision (weights aside).
#[derive(Clone, Copy, Debug, Default)]
pub struct Published {
    pub epoch: u64,
    pub state: Option<usize>,
    pub action: Option<usize>,
    pub ood: bool,
    pub explored: bool,
    pub log_likelihood: Option<f64>,
    pub last_decision_wall_ms: u64,
}

fn opt_index(v: i64) -> Option<usize> {
    usize::try_from(v).ok()
}

impl AgentSlot {
    /// Tries to become the worker that decides now. Returns, when this
    /// worker won, the length of the interval being closed (ms) and whether
    /// it is the very first claim (no baseline snapshot yet).
    pub fn try_claim(&self, now_ms: u64, interval_ms: u64) -> Option<(u64, bool)> {
        let due = self.next_decision_ms.load(Ordering::Acquire);
        if now_ms < due {
            return None;
        }
        self.next_decision_ms
            .compare_exchange(
                due,
                now_ms + interval_ms,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .ok()?;
        let prev = self.prev_decision_ms.swap(now_ms, Ordering::AcqRel);
        Some((now_ms.saturating_sub(prev).max(1), prev == 0))
    }

    /// Milliseconds until the next decision is due (0 if overdue).
    pub fn due_in(&self, now_ms: u64) -> u64 {
        self.next_decision_ms
            .load(Ordering::Relaxed)
            .saturating_sub(now_ms)
    }

    /// Publishes a decision: `write` stores the peers' weights while readers
    /// are held off by the odd sequence number.
    pub fn publish(&self, p: &Published, write: impl FnOnce()) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        write();
        self.state
            .store(p.state.map_or(-1, |s| s as i64), Ordering::Relaxed);
        self.action
            .store(p.action.map_or(-1, |a| a as i64), Ordering::Relaxed);
        self.flags.store(
            u64::from(p.ood) | (u64::from(p.explored) << 1),
            Ordering::Relaxed,
        );
        self.log_likelihood.store(
            p.log_likelihood.unwrap_or(f64::NAN).to_bits(),
            Ordering::Relaxed,
        );
        self.last_decision_wall_ms
            .store(p.last_decision_wall_ms, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.seq.fetch_add(1, Ordering::Release);
    }

    /// The epoch a reader compares with what it applied last (one load).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Reads a consistent decision; `read` copies the peers' weights and is
    /// re-run if a writer interfered.
    pub fn read(&self, mut read: impl FnMut()) -> Published {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                core::hint::spin_loop();
                continue;
            }
            read();
            let ll = f64::from_bits(self.log_likelihood.load(Ordering::Relaxed));
            let flags = self.flags.load(Ordering::Relaxed);
            let p = Published {
                epoch: self.epoch.load(Ordering::Relaxed),
                state: opt_index(self.state.load(Ordering::Relaxed)),
                action: opt_index(self.action.load(Ordering::Relaxed)),
                ood: flags & 1 == 1,
                explored: flags & 2 == 2,
                log_likelihood: (!ll.is_nan()).then_some(ll),
                last_decision_wall_ms: self.last_decision_wall_ms.load(Ordering::Relaxed),
            };
            if self.seq.load(Ordering::Acquire) == s1 {
                return p;
            }
        }
    }
}

/// Where one agent's slots are in the zone.
#[derive(Clone, Copy, Debug)]
pub struct ZoneView {
    base: *mut u8,
    agents: usize,
}

/// Size of the block the module allocates in the zone for `agents` agents
/// and `peers` peers in total.
pub fn block_size(agents: usize, peers: usize) -> usize {
    agents * core::mem::size_of::<AgentSlot>() + peers * core::mem::size_of::<PeerSlot>()
}

impl ZoneView {
    /// # Safety
    /// `base` must point to a zeroed or previously initialised block of
    /// [`block_size`] bytes in shared memory that outlives every use.
    pub unsafe fn new(base: *mut u8, agents: usize) -> Self {
        Self { base, agents }
    }

    pub fn agent(&self, agent: usize) -> &AgentSlot {
        // SAFETY: the block starts with one AgentSlot per agent (see
        // `block_size`); zeroed memory is a valid AgentSlot (all atomics).
        unsafe { &*(self.base as *const AgentSlot).add(agent) }
    }

    pub fn peer(&self, peer: usize) -> &PeerSlot {
        // SAFETY: the peers follow the agent slots; `peer` is below
        // the total count the block was sized for (the layout is fixed at
        // configuration time and the zone name includes its hash).
        unsafe {
            let first = self
                .base
                .add(self.agents * core::mem::size_of::<AgentSlot>());
            &*(first as *const PeerSlot).add(peer)
        }
    }
}

// SAFETY: the view only hands out shared references to atomics.
unsafe impl Send for ZoneView {}
// SAFETY: as above.
unsafe impl Sync for ZoneView {}
