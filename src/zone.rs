//! The shared zone: per-peer counters and per-agent decisions that every
//! worker process reads and writes, and its set-up.
//!
//! One `ngx_shared_memory_add` zone holds, after nginx's slab pool header,
//! one [`AgentSlot`] per agent, one [`PeerSlot`] per peer of every agent,
//! and [`SHARDS`] in-flight shards (an owner pid and one count per peer).
//! Everything in it is an atomic integer, so workers never take a lock to
//! count a request; the only coordination is
//! - a compare-and-swap on [`AgentSlot::next_decision_ms`], which elects the
//!   one worker that decides in an interval, and
//! - the double-buffered [`Publication`] of the decision (weights, state,
//!   action), which a reader can neither tear nor wait on for good.
//!
//! The zone's name carries a hash of the layout (agents, upstreams, peers):
//! a reload with the same layout reuses the zone. What it keeps then, and
//! why (nginx's own upstream zones are `noreuse`, so round robin forgets
//! its failure memory on every reload):
//! - kept: cumulative counters (Prometheus counters must not go back), the
//!   published decision and the in-flight counts of requests the old
//!   workers still serve;
//! - capped: the next decision is due within the *new* interval;
//! - forgotten: the latency estimates and slow-start ramps, which are
//!   failure memory like round robin's `fails`.
//!
//! In-flight counts: a worker that dies (`kill -9`, a crash) never
//! decrements what it counted, and `choose=p2c` would charge those requests
//! for ever. Each process therefore also counts into a shard it owns (by
//! pid); the decider hands the counts of shards whose owner is gone back
//! ([`ZoneView::reclaim_dead_shards`]) once per interval.

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use deep_sched_core::choose::{decayed_latency, peak_ewma, try_latency_ms, PEAK_EWMA_TAU_MS};
use deep_sched_core::counters::{latency_bucket, PeerCounters, LATENCY_BUCKETS};
use deep_sched_core::publish::Publication;
use ngx::ffi::{
    ngx_conf_t, ngx_current_msec, ngx_int_t, ngx_shared_memory_add, ngx_shm_zone_t, ngx_slab_alloc,
    ngx_slab_pool_t, NGX_ERROR, NGX_OK,
};

use crate::config::{main_conf_of_cycle, pool_str, MainConf};
use crate::no_unwind;

/// In-flight shards in the zone: enough for every worker of a few
/// generations draining at once (a process that finds none free counts
/// only globally, and a crash of it cannot be reconciled).
pub const SHARDS: usize = 128;

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
    /// Requests now at the peer, all processes (a gauge).
    pub inflight: AtomicI64,
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
    fn forget_failures(&self) {
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

/// One process's in-flight counts.
#[repr(C)]
struct ShardHeader {
    /// The owning process's pid (0: free; [`RECLAIMING`]: being emptied).
    owner: AtomicU64,
}

/// Owner value while a dead owner's counts are being handed back.
const RECLAIMING: u64 = u64::MAX;

/// The module's block in the zone, as typed slots.
#[derive(Clone, Copy, Debug)]
pub struct ZoneView {
    base: *mut u8,
    agents: usize,
    peers: usize,
}

/// Size of the block the module allocates in the zone for `agents` agents
/// and `peers` peers in total.
pub fn block_size(agents: usize, peers: usize) -> usize {
    agents * core::mem::size_of::<AgentSlot>()
        + peers * core::mem::size_of::<PeerSlot>()
        + SHARDS * shard_size(peers)
}

fn shard_size(peers: usize) -> usize {
    core::mem::size_of::<ShardHeader>() + peers * core::mem::size_of::<AtomicI64>()
}

impl ZoneView {
    /// The view of `main`'s block, once the zone is mapped.
    pub fn of(main: &MainConf) -> Option<ZoneView> {
        let base = main.block.get();
        (!base.is_null()).then_some(ZoneView {
            base,
            agents: main.agents.len(),
            peers: main.total_peers,
        })
    }

    pub fn agent(&self, agent: usize) -> &AgentSlot {
        assert!(agent < self.agents, "agent slot {agent} out of range");
        // SAFETY: the block starts with one AgentSlot per agent (see
        // `block_size`); zeroed memory is a valid AgentSlot (all atomics).
        unsafe { &*(self.base as *const AgentSlot).add(agent) }
    }

    pub fn peer(&self, peer: usize) -> &PeerSlot {
        assert!(peer < self.peers, "peer slot {peer} out of range");
        // SAFETY: the peers follow the agent slots; `peer` is below the
        // total count the block was sized for (the layout is fixed at
        // configuration time and the zone name includes its hash).
        unsafe {
            let first = self
                .base
                .add(self.agents * core::mem::size_of::<AgentSlot>());
            &*(first as *const PeerSlot).add(peer)
        }
    }

    fn shard(&self, shard: usize) -> (&ShardHeader, *const AtomicI64) {
        assert!(shard < SHARDS, "shard {shard} out of range");
        // SAFETY: the shards follow the peer slots, each a header and one
        // count per peer; zeroed memory is a free shard.
        unsafe {
            let first = self.base.add(
                self.agents * core::mem::size_of::<AgentSlot>()
                    + self.peers * core::mem::size_of::<PeerSlot>(),
            );
            let h = first.add(shard * shard_size(self.peers)) as *const ShardHeader;
            (&*h, h.add(1) as *const AtomicI64)
        }
    }

    fn shard_count(&self, shard: usize, peer: usize) -> &AtomicI64 {
        assert!(peer < self.peers, "peer slot {peer} out of range");
        let (_, counts) = self.shard(shard);
        // SAFETY: a shard has one count per peer.
        unsafe { &*counts.add(peer) }
    }

    /// Counts a request to `peer` starting (`delta` 1) or ending (-1), in
    /// the peer's gauge and in this process's shard.
    pub fn add_inflight(&self, shard: Option<usize>, peer: usize, delta: i64) {
        self.peer(peer).inflight.fetch_add(delta, Ordering::Relaxed);
        if let Some(s) = shard {
            self.shard_count(s, peer)
                .fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Claims a shard for process `pid` (a free one, or one whose owner
    /// is gone, after handing its counts back: how many is the second
    /// value). `None` when all are taken.
    pub fn claim_shard(&self, pid: u64) -> (Option<usize>, i64) {
        let returned = self.reclaim_dead_shards(pid);
        let shard = (0..SHARDS).find(|&s| {
            self.shard(s)
                .0
                .owner
                .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        (shard, returned)
    }

    /// Hands the in-flight counts of shards whose process is gone back to
    /// the peers' gauges and frees the shards. Returns how many requests
    /// were handed back. `me` is never considered gone.
    pub fn reclaim_dead_shards(&self, me: u64) -> i64 {
        let mut returned = 0;
        for s in 0..SHARDS {
            let (h, _) = self.shard(s);
            let owner = h.owner.load(Ordering::Acquire);
            if owner == 0 || owner == RECLAIMING || owner == me || process_alive(owner) {
                continue;
            }
            if h.owner
                .compare_exchange(owner, RECLAIMING, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            for p in 0..self.peers {
                let n = self.shard_count(s, p).swap(0, Ordering::AcqRel);
                if n != 0 {
                    self.peer(p).inflight.fetch_sub(n, Ordering::Relaxed);
                    returned += n;
                }
            }
            h.owner.store(0, Ordering::Release);
        }
        returned
    }
}

/// Whether process `pid` exists (signal 0 checks without sending).
fn process_alive(pid: u64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for the process.
    if unsafe { ngx::ffi::kill(pid, 0) } == 0 {
        return true;
    }
    // EPERM: it exists under another user; only ESRCH says it is gone.
    std::io::Error::last_os_error().raw_os_error() != Some(ngx::ffi::ESRCH as i32)
}

// SAFETY: the view only hands out shared references to atomics.
unsafe impl Send for ZoneView {}
// SAFETY: as above.
unsafe impl Sync for ZoneView {}

/// Configuration time, after every upstream was initialised: adds the zone
/// named by `layout`'s hash, sized for `main`'s agents and peers.
pub unsafe fn add_zone(cf: *mut ngx_conf_t, main: &mut MainConf, layout: &str) -> bool {
    let bytes = block_size(main.agents.len(), main.total_peers);
    // Room for the slab allocator's own pages and rounding.
    let size = (bytes + 16 * 4096).next_multiple_of(4096);
    let name = format!("deep_sched_{:016x}", fnv1a(layout.as_bytes()));
    // SAFETY: the name is copied into the configuration pool, which lives as
    // long as the cycle that owns the zone; main lives in the same pool.
    unsafe {
        let Some(mut zname) = pool_str(cf, &name) else {
            return false;
        };
        let tag = ptr::addr_of!(crate::ngx_http_deep_sched_module) as *mut c_void;
        let zone = ngx_shared_memory_add(cf, &mut zname, size, tag);
        if zone.is_null() {
            return false;
        }
        (*zone).init = Some(init_zone);
        (*zone).data = (main as *mut MainConf).cast();
        main.zone = zone;
    }
    true
}

/// FNV-1a, 64 bit: a stable name for the zone layout (std's hasher is
/// randomly seeded per process, which would change the name per reload).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Maps the zone: allocates the block on first use, or finds it again when
/// a reload kept the zone (same name, hence same layout).
unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, _old: *mut c_void) -> ngx_int_t {
    no_unwind(NGX_ERROR as ngx_int_t, || {
        // SAFETY: nginx calls init with the mapped zone, during the cycle's
        // initialisation (one process, nothing else holds the main conf);
        // shm.addr starts with the slab pool nginx initialised; zone.data is
        // our main conf.
        unsafe {
            let main = &mut *((*zone).data as *mut MainConf);
            let shpool = (*zone).shm.addr as *mut ngx_slab_pool_t;
            let mut block = (*shpool).data as *mut u8;
            let fresh = block.is_null();
            if fresh {
                let bytes = block_size(main.agents.len(), main.total_peers);
                block = ngx_slab_alloc(shpool, bytes) as *mut u8;
                if block.is_null() {
                    return NGX_ERROR as ngx_int_t;
                }
                ptr::write_bytes(block, 0, bytes);
                (*shpool).data = block.cast();
            }
            main.block.set(block);
            retire_previous_zone(main, zone);
            let Some(view) = ZoneView::of(main) else {
                return NGX_ERROR as ngx_int_t;
            };
            // SAFETY: read of the event loop's monotonic clock (the master's,
            // which the workers share: it is CLOCK_MONOTONIC based).
            let now = ngx_current_msec as u64;
            if fresh {
                init_slots(main, &view, now);
            } else {
                adopt_slots(main, &view, now);
            }
            NGX_OK as ngx_int_t
        }
    })
}

/// A reload in this process (`master_process off`): when the running
/// configuration's zone is not the one the new configuration keeps, nginx
/// unmaps it once the new cycle is up, while the old configuration may
/// still serve requests (and its status page). It then stops using the
/// zone. In master mode the master never serves, and old workers keep their
/// own mapping.
unsafe fn retire_previous_zone(new: &MainConf, zone: *mut ngx_shm_zone_t) {
    // SAFETY: during a reload ngx_cycle is still the running cycle, whose
    // configuration is live; its zone entry lives in its pool.
    unsafe {
        let Some(old) = main_conf_of_cycle(&*ngx::ffi::ngx_cycle) else {
            return;
        };
        if ptr::eq(old, new) || old.zone.is_null() {
            return;
        }
        if (*old.zone).shm.name.as_bytes() != (*zone).shm.name.as_bytes() {
            old.block.set(ptr::null_mut());
        }
    }
}

/// First mapping of a fresh zone: publish the starting weights (the
/// configured ones, or the policy's default action) and schedule the first
/// decision one interval from now.
fn init_slots(main: &MainConf, view: &ZoneView, now: u64) {
    for agent in &main.agents {
        let start = agent.decider_template().initial_weights();
        let slot = view.agent(agent.index);
        slot.publish(&Published::default(), |b| {
            for up in &agent.upstreams {
                for (i, w) in start[up.index].iter().enumerate() {
                    view.peer(up.slot_base + i).weight[b].store(*w, Ordering::Relaxed);
                }
            }
        });
        for up in &agent.upstreams {
            for i in 0..up.peers.len() {
                let p = view.peer(up.slot_base + i);
                p.prev.store(&p.live.load(0));
            }
        }
        slot.prev_decision_ms.store(now, Ordering::Relaxed);
        slot.next_decision_ms
            .store(now + agent.interval_ms, Ordering::Release);
    }
}

/// A reload kept the zone: the next decision is due within the new
/// interval, and the failure memory goes (see the module doc).
fn adopt_slots(main: &MainConf, view: &ZoneView, now: u64) {
    for agent in &main.agents {
        let slot = view.agent(agent.index);
        slot.next_decision_ms
            .fetch_min(now + agent.interval_ms, Ordering::AcqRel);
        slot.slow_start_until_ms.store(0, Ordering::Relaxed);
        for up in &agent.upstreams {
            for i in 0..up.peers.len() {
                view.peer(up.slot_base + i).forget_failures();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv_is_stable() {
        assert_eq!(super::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(super::fnv1a(b"a"), super::fnv1a(b"b"));
    }
}
