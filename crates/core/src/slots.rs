//! The records the module keeps in nginx's shared memory, as plain
//! `#[repr(C)]` atomics: per peer ([`PeerSlot`]: cumulative counters, the
//! snapshot of the last decision, in flight, the latency estimate, the
//! failure run and slow start, the published weights) and per agent
//! ([`AgentSlot`]: the decision schedule and the published decision).
//!
//! No nginx here: the module maps them over its zone (all-zero memory is a
//! valid record), and they are tested and benchmarked as ordinary values.
//! Everything on the request path is a relaxed atomic operation, no lock,
//! no allocation.

#![allow(missing_docs)]

use core::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use crate::check::{step, CheckError, Health, HealthState, Lease};
use crate::choose::{decayed_latency, peak_ewma, try_latency_ms, PEAK_EWMA_TAU_MS};
use crate::counters::{latency_bucket, PeerCounters, LATENCY_BUCKETS};
use crate::publish::Publication;
use crate::samples::DispatchedCounts;

/// Cumulative counters of one peer, summed over all workers.
#[repr(C)]
#[derive(Default)]
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

/// How many decision intervals of dispatch credit a peer keeps, by epoch
/// modulo this: the interval being dispatched, the one whose tries are
/// still ending, and two spare cells so a cell is zeroed three intervals
/// before it is used again.
pub const DISPATCH_RING: usize = 4;

/// Tries of one peer by the decision interval that dispatched them (see
/// [`crate::samples::DispatchedCounts`]).
#[repr(C)]
#[derive(Default)]
pub struct DispatchCells {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub response_msec: AtomicU64,
    pub latency_hist: [AtomicU64; LATENCY_BUCKETS],
}

impl DispatchCells {
    fn add(&self, outcome: &TryOutcome) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if outcome.failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.response_msec
            .fetch_add(outcome.response_msec, Ordering::Relaxed);
        self.latency_hist[latency_bucket(outcome.response_msec)].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads and zeroes the cells (each cell by one swap: a try added
    /// meanwhile lands either in what is returned or in the next use of
    /// the cells, never nowhere).
    pub fn take(&self) -> DispatchedCounts {
        let mut d = DispatchedCounts {
            requests: self.requests.swap(0, Ordering::Relaxed),
            failures: self.failures.swap(0, Ordering::Relaxed),
            response_msec: self.response_msec.swap(0, Ordering::Relaxed),
            ..DispatchedCounts::default()
        };
        for (dst, src) in d.latency_hist.iter_mut().zip(&self.latency_hist) {
            *dst = src.swap(0, Ordering::Relaxed);
        }
        d
    }
}

/// Everything the zone keeps about one peer.
#[repr(C)]
#[derive(Default)]
pub struct PeerSlot {
    /// Live cumulative counters of processes without a counter shard of
    /// their own (the zone adds every shard's to these when read).
    pub live: CounterCells,
    /// The snapshot taken at the last decision.
    pub prev: CounterCells,
    /// Requests now at the peer, all processes (a gauge).
    pub inflight: AtomicI64,
    /// Requests now at this peer's address over every slot that names it
    /// (kept in the first such slot only; see
    /// [`crate::choose::shared_addresses`]).
    pub address_inflight: AtomicI64,
    /// Recent time to the response header, ms, as `f64` bits: the peak
    /// EWMA (`deep_sched_core::choose::peak_ewma`).
    pub latency_ewma: AtomicU64,
    /// When `latency_ewma` last took a sample, `ngx_current_msec`.
    pub latency_stamp_ms: AtomicU64,
    /// Failed tries in a row (reset by a success).
    pub failure_run: AtomicU32,
    /// When the peer's slow start began, `ngx_current_msec` (0: none).
    pub slow_start_since_ms: AtomicU64,
    /// Published weight, one per publication buffer.
    pub weight: [AtomicU32; 2],
    /// Tries by the decision epoch that dispatched them, modulo
    /// [`DISPATCH_RING`] (see [`PeerSlot::record_dispatch`]).
    pub dispatched: [DispatchCells; DISPATCH_RING],
    /// Tries that ended two or more epochs after their dispatch.
    pub late: DispatchCells,
    /// Runtime API flags ([`crate::api::flags`]: drain, down).
    pub admin: AtomicU32,
    /// Runtime API weight (0: none), over the agent's and the pin.
    pub admin_weight: AtomicU32,
    /// The agent's pinned weight for this peer (while the agent is pinned).
    pub pinned_weight: AtomicU32,
    /// What the active health checks found (all zero without checks).
    pub health: HealthCells,
}

/// One peer's active health check results (`deep_sched_check`), written
/// by the one checking process, read by every worker per request (one
/// relaxed load of `health`).
#[repr(C)]
#[derive(Default)]
pub struct HealthCells {
    /// [`Health`] as its discriminant (0: checking).
    pub health: AtomicU32,
    /// Consecutive passed checks.
    pub passes: AtomicU32,
    /// Consecutive failed checks.
    pub fails: AtomicU32,
    /// Why the last check failed ([`CheckError`] discriminant, 0: passed).
    pub error: AtomicU32,
    /// HTTP status of the last answer (0: none).
    pub status: AtomicU32,
    /// Wall clock of the last finished check, ms since the epoch (0: none).
    pub wall_ms: AtomicU64,
    /// How long the last check took, ms.
    pub latency_ms: AtomicU64,
    /// Checks finished since the zone was created.
    pub checks: AtomicU64,
}

impl HealthCells {
    /// The health in force.
    #[inline]
    pub fn health(&self) -> Health {
        Health::from_u32(self.health.load(Ordering::Relaxed))
    }

    /// Whether the checks took the peer out (the request path's test).
    #[inline]
    pub fn is_down(&self) -> bool {
        self.health.load(Ordering::Relaxed) == Health::Down as u32
    }

    /// The state machine's input.
    pub fn state(&self) -> HealthState {
        HealthState {
            health: self.health(),
            passes: self.passes.load(Ordering::Relaxed),
            fails: self.fails.load(Ordering::Relaxed),
        }
    }

    /// Records one finished check: its result, through [`step`], and what
    /// it saw. Returns the health the peer left, once per transition.
    pub fn record(
        &self,
        error: CheckError,
        status: u16,
        wall_ms: u64,
        latency_ms: u64,
        fall: u32,
        rise: u32,
    ) -> Option<Health> {
        let (next, from) = step(self.state(), error == CheckError::None, fall, rise);
        self.passes.store(next.passes, Ordering::Relaxed);
        self.fails.store(next.fails, Ordering::Relaxed);
        self.error.store(error as u32, Ordering::Relaxed);
        self.status.store(u32::from(status), Ordering::Relaxed);
        self.wall_ms.store(wall_ms, Ordering::Relaxed);
        self.latency_ms.store(latency_ms, Ordering::Relaxed);
        self.checks.fetch_add(1, Ordering::Relaxed);
        self.health.store(next.health as u32, Ordering::Release);
        from
    }

    /// Copies another peer's results (a reload that moved the peer to a new
    /// zone keeps what the checks found).
    pub fn copy_from(&self, other: &HealthCells) {
        for (d, s) in [
            (&self.health, &other.health),
            (&self.passes, &other.passes),
            (&self.fails, &other.fails),
            (&self.error, &other.error),
            (&self.status, &other.status),
        ] {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (d, s) in [
            (&self.wall_ms, &other.wall_ms),
            (&self.latency_ms, &other.latency_ms),
            (&self.checks, &other.checks),
        ] {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// What the free-peer callback learned about one try.
pub struct TryOutcome {
    /// `Some(0..=4)` for 1xx..5xx, `None` when no response header arrived.
    pub status_class: Option<usize>,
    /// nginx counted the try as a failure of the peer.
    pub failed: bool,
    /// Time to the end of the response, ms (counters and histogram).
    pub response_msec: u64,
    /// Time to the response header, ms, when one arrived: what the latency
    /// estimate of `choose=p2c` follows (as nginx's `least_time header`),
    /// so a large download or a long poll does not read as a slow peer.
    pub header_msec: Option<u64>,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

impl PeerSlot {
    /// Records one finished try at this peer. Called per request: only
    /// relaxed atomic operations, no lock, no allocation. `now_ms` is
    /// nginx's cached clock. Returns true when this success ends a run of
    /// at least `max_fails` failures (the peer is back).
    pub fn record(&self, outcome: &TryOutcome, now_ms: u64, max_fails: u32) -> bool {
        self.record_into(&self.live, outcome, now_ms, max_fails)
    }

    /// As [`PeerSlot::record`], counting into `c`: the recording process's
    /// own counter shard (off the cache lines other workers write), or this
    /// slot's shared `live` cells for a process without one. The latency
    /// estimate and the failure run stay in this slot, where every worker
    /// reads them.
    pub fn record_into(
        &self,
        c: &CounterCells,
        outcome: &TryOutcome,
        now_ms: u64,
        max_fails: u32,
    ) -> bool {
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
        c.latency_hist[latency_bucket(outcome.response_msec)].fetch_add(1, Ordering::Relaxed);
        // A racy read-modify-write is acceptable for a smoothed signal: a lost
        // update only skips one sample.
        let measured = outcome.header_msec.unwrap_or(outcome.response_msec);
        let sample = try_latency_ms(measured, outcome.failed);
        let old = f64::from_bits(self.latency_ewma.load(Ordering::Relaxed));
        let last = self.latency_stamp_ms.swap(now_ms, Ordering::Relaxed);
        // The average as it reads now (decayed), then the new sample.
        let old = decayed_latency(old, now_ms.saturating_sub(last));
        let new = peak_ewma(old, now_ms.saturating_sub(last), sample, PEAK_EWMA_TAU_MS);
        self.latency_ewma.store(new.to_bits(), Ordering::Relaxed);

        if outcome.failed {
            self.failure_run.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // One load on the common path; the swap only after failures.
        if self.failure_run.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.failure_run.swap(0, Ordering::Relaxed) >= max_fails.max(1)
    }

    /// Charges a finished try to the decision epoch that dispatched it.
    ///
    /// The decider closes epoch `e` when it publishes `e + 1` and takes the
    /// cells of `e − 1` right after publishing, so a try that ends while
    /// the epoch is `dispatch` or `dispatch + 1` goes to its dispatch
    /// cells, and one that ends later (`now_epoch ≥ dispatch + 2`) to
    /// `late`. Relaxed atomics only; `dispatch == 0` (no zone epoch yet)
    /// is not charged.
    pub fn record_dispatch(&self, outcome: &TryOutcome, dispatch: u64, now_epoch: u64) {
        if dispatch == 0 {
            return;
        }
        if now_epoch >= dispatch + 2 {
            self.late.add(outcome);
        } else {
            self.dispatched[(dispatch % DISPATCH_RING as u64) as usize].add(outcome);
        }
    }

    /// Takes (reads and zeroes) the tries dispatched in `epoch` and the
    /// late ones, for the decision that just published `epoch + 2`.
    pub fn take_dispatched(&self, epoch: u64) -> (DispatchedCounts, DispatchedCounts) {
        (
            self.dispatched[(epoch % DISPATCH_RING as u64) as usize].take(),
            self.late.take(),
        )
    }

    /// The peer's latency estimate as of `now_ms`, ms: the peak EWMA
    /// decayed by the time since its last sample (0 before the first).
    pub fn latency_ms(&self, now_ms: u64) -> f64 {
        let m = f64::from_bits(self.latency_ewma.load(Ordering::Relaxed));
        let stamp = self.latency_stamp_ms.load(Ordering::Relaxed);
        decayed_latency(m, now_ms.saturating_sub(stamp))
    }

    /// Current in-flight count, never negative.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed).max(0) as u64
    }

    /// Forgets the failure memory (a reload, as nginx's round robin does).
    pub fn forget_failures(&self) {
        self.latency_ewma.store(0, Ordering::Relaxed);
        self.latency_stamp_ms.store(0, Ordering::Relaxed);
        self.failure_run.store(0, Ordering::Relaxed);
        self.slow_start_since_ms.store(0, Ordering::Relaxed);
    }
}

/// One buffer of an agent's published decision (weights aside, which live
/// in the peers' slots).
#[repr(C)]
#[derive(Default)]
pub struct DecisionCells {
    /// State, or -1.
    pub state: AtomicI64,
    /// Action index in the policy, or -1.
    pub action: AtomicI64,
    /// bit 0: out of distribution, bit 1: explored.
    pub flags: AtomicU64,
    /// Log-likelihood of the last observation, as `f64` bits.
    pub log_likelihood: AtomicU64,
    /// Wall clock (ms since the epoch) of the decision.
    pub wall_ms: AtomicU64,
    /// The process that decided.
    pub pid: AtomicU64,
}

/// The per-agent slot.
#[repr(C)]
#[derive(Default)]
pub struct AgentSlot {
    /// Monotonic ms at which the next decision is due; the worker that
    /// moves it forward decides.
    pub next_decision_ms: AtomicU64,
    /// Monotonic ms of the previous decision (for the interval length).
    pub prev_decision_ms: AtomicU64,
    /// Until when (monotonic ms) some peer of the agent may be in slow
    /// start: one load tells the request path there is nothing to ramp.
    pub slow_start_until_ms: AtomicU64,
    /// The publication protocol of the decision.
    pub publication: Publication,
    /// The decision's fields, one per publication buffer.
    pub decision: [DecisionCells; 2],
    /// Bumped by every runtime API change to the agent or its peers: the
    /// request path compares it with what it applied (one load).
    pub admin_epoch: AtomicU64,
    /// Runtime API `mode: observe`: decisions are paused, the configured
    /// weights apply.
    pub paused: AtomicU32,
    /// Runtime API `pin`: the peers' `pinned_weight`s apply.
    pub pinned: AtomicU32,
    /// Who runs the agent's health checks (`deep_sched_check`).
    pub check_lease: Lease,
    /// How many of the agent's peers the checks hold down (recounted at
    /// every transition): while 0, the request path reads no peer's health.
    pub checks_down: AtomicU64,
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
    pub pid: u64,
}

fn opt_index(v: i64) -> Option<usize> {
    usize::try_from(v).ok()
}

impl AgentSlot {
    /// Tries to become the worker that decides now. Returns, when this
    /// worker won, the length of the interval being closed (ms).
    pub fn try_claim(&self, now_ms: u64, interval_ms: u64) -> Option<u64> {
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
        Some(now_ms.saturating_sub(prev).max(1))
    }

    /// Milliseconds until the next decision is due (0 if overdue).
    pub fn due_in(&self, now_ms: u64) -> u64 {
        self.next_decision_ms
            .load(Ordering::Relaxed)
            .saturating_sub(now_ms)
    }

    /// Publishes a decision: `write(b)` stores the peers' weights of
    /// buffer `b`; the fields of `p` go to the same buffer.
    pub fn publish(&self, p: &Published, write: impl FnOnce(usize)) -> u64 {
        self.publication.publish(|b| {
            write(b);
            let d = &self.decision[b];
            d.state
                .store(p.state.map_or(-1, |s| s as i64), Ordering::Relaxed);
            d.action
                .store(p.action.map_or(-1, |a| a as i64), Ordering::Relaxed);
            d.flags.store(
                u64::from(p.ood) | (u64::from(p.explored) << 1),
                Ordering::Relaxed,
            );
            d.log_likelihood.store(
                p.log_likelihood.unwrap_or(f64::NAN).to_bits(),
                Ordering::Relaxed,
            );
            d.wall_ms.store(p.last_decision_wall_ms, Ordering::Relaxed);
            d.pid.store(p.pid, Ordering::Relaxed);
        })
    }

    /// The epoch a reader compares with what it applied last (one load).
    pub fn epoch(&self) -> u64 {
        self.publication.epoch()
    }

    /// Reads the newest decision whole; `read(b)` copies the peers' weights
    /// of buffer `b` and may run more than once. `None` when a writer kept
    /// interfering (the caller keeps what it had).
    pub fn read(&self, mut read: impl FnMut(usize)) -> Option<Published> {
        let (epoch, mut p) = self.publication.read(|b| {
            read(b);
            let d = &self.decision[b];
            let ll = f64::from_bits(d.log_likelihood.load(Ordering::Relaxed));
            let flags = d.flags.load(Ordering::Relaxed);
            Published {
                epoch: 0,
                state: opt_index(d.state.load(Ordering::Relaxed)),
                action: opt_index(d.action.load(Ordering::Relaxed)),
                ood: flags & 1 == 1,
                explored: flags & 2 == 2,
                log_likelihood: (!ll.is_nan()).then_some(ll),
                last_decision_wall_ms: d.wall_ms.load(Ordering::Relaxed),
                pid: d.pid.load(Ordering::Relaxed),
            }
        })?;
        p.epoch = epoch;
        Some(p)
    }
}

// The publication uses loom's atomics under `--cfg loom`: these tests run
// without it.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn health_cells_follow_the_state_machine() {
        let h: HealthCells = zeroed();
        assert_eq!(h.health(), Health::Checking);
        assert!(!h.is_down());
        assert_eq!(
            h.record(CheckError::Refused, 0, 5, 1, 2, 2),
            Some(Health::Checking)
        );
        assert!(h.is_down());
        assert_eq!(h.error.load(Ordering::Relaxed), CheckError::Refused as u32);
        assert_eq!(h.record(CheckError::None, 200, 6, 3, 2, 2), None);
        assert!(h.is_down(), "one pass of rise=2");
        assert_eq!(
            h.record(CheckError::None, 200, 7, 3, 2, 2),
            Some(Health::Down)
        );
        assert_eq!(h.health(), Health::Up);
        assert_eq!(
            (
                h.passes.load(Ordering::Relaxed),
                h.checks.load(Ordering::Relaxed)
            ),
            (2, 3)
        );
        assert_eq!(h.record(CheckError::Status, 500, 8, 3, 2, 2), None);
        assert_eq!(
            h.record(CheckError::Status, 500, 9, 3, 2, 2),
            Some(Health::Up)
        );
        let copy: HealthCells = zeroed();
        copy.copy_from(&h);
        assert_eq!(copy.state(), h.state());
        assert_eq!(copy.status.load(Ordering::Relaxed), 500);
        assert_eq!(copy.wall_ms.load(Ordering::Relaxed), 9);
    }

    /// A fresh record: all zeros, as in a fresh zone.
    fn zeroed<T: Default>() -> T {
        T::default()
    }

    fn ok(ms: u64) -> TryOutcome {
        TryOutcome {
            status_class: Some(1),
            failed: false,
            response_msec: ms,
            header_msec: Some(ms / 2),
            in_bytes: 100,
            out_bytes: 10,
        }
    }

    fn failed() -> TryOutcome {
        TryOutcome {
            status_class: None,
            failed: true,
            response_msec: 3,
            header_msec: None,
            in_bytes: 0,
            out_bytes: 0,
        }
    }

    #[test]
    fn a_try_is_counted_once_everywhere() {
        let p: PeerSlot = zeroed();
        assert!(!p.record(&ok(40), 1_000, 1));
        let c = p.live.load(0);
        assert_eq!((c.requests, c.in_bytes, c.out_bytes), (1, 100, 10));
        assert_eq!(c.responses, [0, 1, 0, 0, 0]);
        assert_eq!(c.response_msec, 40);
        assert_eq!(c.latency_hist.iter().sum::<u64>(), 1);
        // The estimate follows the header time (20 ms), not the last byte.
        assert_eq!(p.latency_ms(1_000), 20.0);
    }

    #[test]
    fn a_success_after_max_fails_failures_is_a_return() {
        let p: PeerSlot = zeroed();
        assert!(!p.record(&failed(), 10, 2));
        assert!(
            !p.record(&ok(5), 20, 2),
            "one failure of max_fails=2 is no return"
        );
        assert!(!p.record(&failed(), 30, 2));
        assert!(!p.record(&failed(), 40, 2));
        assert!(p.record(&ok(5), 50, 2), "back after two failures");
        assert!(!p.record(&ok(5), 60, 2), "once");
        assert_eq!(p.live.load(0).failures, 3);
        // max_fails=0 (nginx never marks it failed) still counts one.
        assert!(!p.record(&failed(), 70, 0));
        assert!(p.record(&ok(5), 80, 0));
    }

    #[test]
    fn a_failure_reads_as_slow_then_decays() {
        let p: PeerSlot = zeroed();
        p.record(&ok(10), 1_000, 1);
        p.record(&failed(), 1_010, 1);
        assert_eq!(p.latency_ms(1_010), crate::choose::FAILURE_PENALTY_MS);
        assert!(p.latency_ms(3_010) <= 1.0, "{}", p.latency_ms(3_010));
        p.forget_failures();
        assert_eq!(p.latency_ms(3_010), 0.0);
        assert_eq!(p.failure_run.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn decisions_are_published_and_claimed_once_per_interval() {
        let a: AgentSlot = zeroed();
        a.next_decision_ms.store(1_000, Ordering::Relaxed);
        assert_eq!(a.try_claim(999, 500), None, "not due");
        assert_eq!(a.try_claim(1_000, 500), Some(1_000));
        assert_eq!(a.try_claim(1_001, 500), None, "claimed for this interval");
        assert_eq!(a.due_in(1_200), 300);
        let p = Published {
            state: Some(3),
            action: Some(1),
            explored: true,
            log_likelihood: Some(-2.5),
            last_decision_wall_ms: 77,
            pid: 42,
            ..Published::default()
        };
        let w: [AtomicU32; 2] = Default::default();
        let e = a.publish(&p, |b| w[b].store(9, Ordering::Relaxed));
        let mut seen = 0;
        let got = a.read(|b| seen = w[b].load(Ordering::Relaxed)).unwrap();
        assert_eq!((got.epoch, seen), (e, 9));
        assert_eq!(got.state, Some(3));
        assert_eq!(got.action, Some(1));
        assert!(got.explored && !got.ood);
        assert_eq!(got.log_likelihood, Some(-2.5));
        assert_eq!((got.last_decision_wall_ms, got.pid), (77, 42));
    }

    /// Tries dispatched in epochs 1..=20, each ending 0..=3 epochs later;
    /// the decider publishes epoch `e + 1` and then takes the cells of
    /// `e − 1`. Every try is reported exactly once, and a try that ended
    /// within one epoch of its dispatch is reported for its dispatch epoch.
    mod dispatch {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn every_try_is_credited_once_and_on_time_ones_to_their_interval(
                tries in proptest::collection::vec((1u64..=20, 0u64..=3, 0u64..5000), 0..300)
            ) {
                let slot: PeerSlot = zeroed();
                // Ends, by the epoch in force when they end.
                let mut by_end: Vec<Vec<(u64, u64)>> = vec![Vec::new(); 25];
                for &(d, lag, ms) in &tries {
                    by_end[(d + lag) as usize].push((d, ms));
                }
                let mut reported = vec![DispatchedCounts::default(); 25];
                let mut late = DispatchedCounts::default();
                for epoch in 1..25u64 {
                    for &(d, ms) in &by_end[epoch as usize] {
                        slot.record_dispatch(&ok(ms), d, epoch);
                    }
                    // The decision that publishes epoch + 1, then takes epoch − 1.
                    if epoch >= 2 {
                        let (d, l) = slot.take_dispatched(epoch - 1);
                        reported[(epoch - 1) as usize] = d;
                        late.requests += l.requests;
                        late.response_msec += l.response_msec;
                    }
                }
                let (d, l) = slot.take_dispatched(24);
                reported[24] = d;
                late.requests += l.requests;
                late.response_msec += l.response_msec;
                let total: u64 = reported.iter().map(|r| r.requests).sum::<u64>() + late.requests;
                prop_assert_eq!(total, tries.len() as u64);
                let msec: u64 = reported.iter().map(|r| r.response_msec).sum::<u64>() + late.response_msec;
                prop_assert_eq!(msec, tries.iter().map(|t| t.2).sum::<u64>());
                for e in 1..=20u64 {
                    let on_time: Vec<u64> = tries.iter().filter(|t| t.0 == e && t.1 <= 1).map(|t| t.2).collect();
                    let r = &reported[e as usize];
                    prop_assert_eq!(r.requests, on_time.len() as u64, "epoch {}", e);
                    prop_assert_eq!(r.response_msec, on_time.iter().sum::<u64>());
                    prop_assert_eq!(r.latency_hist.iter().sum::<u64>(), r.requests);
                }
            }
        }

        #[test]
        fn no_epoch_yet_is_not_charged_and_failures_are_counted() {
            let slot: PeerSlot = zeroed();
            slot.record_dispatch(&ok(5), 0, 3);
            slot.record_dispatch(&failed(), 3, 3);
            slot.record_dispatch(&ok(5), 3, 4);
            let (d, l) = slot.take_dispatched(3);
            assert_eq!((d.requests, d.failures, d.response_msec), (2, 1, 8));
            assert_eq!(l, DispatchedCounts::default());
            assert_eq!(
                slot.take_dispatched(3).0,
                DispatchedCounts::default(),
                "taken"
            );
        }
    }
}
