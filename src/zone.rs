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
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use deep_sched_core::counters::PeerCounters;
pub use deep_sched_core::slots::{AgentSlot, CounterCells, PeerSlot, Published, TryOutcome};
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
    counter_shards: usize,
    /// The main conf's `shared_address` (one entry per peer slot).
    shared: *const Option<usize>,
}

/// Size of the block the module allocates in the zone for `agents` agents,
/// `peers` peers in total and `counter_shards` counter shards.
pub fn block_size(agents: usize, peers: usize, counter_shards: usize) -> usize {
    agents * core::mem::size_of::<AgentSlot>()
        + peers * core::mem::size_of::<PeerSlot>()
        + SHARDS * shard_size(peers)
        + counter_shards * counter_shard_size(peers)
}

fn counter_shard_size(peers: usize) -> usize {
    core::mem::size_of::<ShardHeader>() + peers * core::mem::size_of::<CounterCells>()
}

/// Most counter shards a zone gets, whatever `worker_processes` says.
pub const MAX_COUNTER_SHARDS: usize = 34;

/// Counter shards for `workers` worker processes: one per worker of two
/// generations (a reload's old workers drain while the new ones start),
/// plus two, at most [`MAX_COUNTER_SHARDS`]. A process that finds none free
/// counts into the peers' shared cells: the counts stay exact.
pub fn counter_shards_for(workers: usize) -> usize {
    (2 * workers.max(1) + 2).min(MAX_COUNTER_SHARDS)
}

/// `worker_processes` as configured so far (1 when not set yet).
///
/// # Safety
/// `cycle` must be the cycle being configured.
pub unsafe fn configured_workers(cycle: *mut ngx::ffi::ngx_cycle_t) -> usize {
    // SAFETY: conf_ctx[ngx_core_module.index] is the core conf, created
    // before the configuration is read.
    unsafe {
        let ccf = *(*cycle).conf_ctx.add(ngx::ffi::ngx_core_module.index)
            as *const ngx::ffi::ngx_core_conf_t;
        if ccf.is_null() {
            return 1;
        }
        usize::try_from((*ccf).worker_processes).unwrap_or(1).max(1)
    }
}

fn shard_size(peers: usize) -> usize {
    core::mem::size_of::<ShardHeader>() + peers * core::mem::size_of::<AtomicI64>()
}

impl ZoneView {
    /// The view of `main`'s block, once the zone is mapped.
    pub fn of(main: &MainConf) -> Option<ZoneView> {
        let base = main.block.get();
        (!base.is_null() && main.shared_address.len() == main.total_peers).then_some(ZoneView {
            base,
            agents: main.agents.len(),
            peers: main.total_peers,
            counter_shards: main.counter_shards,
            shared: main.shared_address.as_ptr(),
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

    fn counter_shard(&self, shard: usize) -> (&ShardHeader, *const CounterCells) {
        assert!(
            shard < self.counter_shards,
            "counter shard {shard} out of range"
        );
        // SAFETY: the counter shards follow the in-flight shards, each a
        // header and one CounterCells per peer; zeroed memory is a free
        // shard with zero counts.
        unsafe {
            let first = self.base.add(
                self.agents * core::mem::size_of::<AgentSlot>()
                    + self.peers * core::mem::size_of::<PeerSlot>()
                    + SHARDS * shard_size(self.peers),
            );
            let h = first.add(shard * counter_shard_size(self.peers)) as *const ShardHeader;
            (&*h, h.add(1) as *const CounterCells)
        }
    }

    /// Where process `shard`'s counts of `peer` go: its counter shard, or
    /// the peer's shared cells.
    pub fn counter_cells(&self, shard: Option<usize>, peer: usize) -> &CounterCells {
        assert!(peer < self.peers, "peer slot {peer} out of range");
        match shard {
            Some(s) => {
                let (_, cells) = self.counter_shard(s);
                // SAFETY: a counter shard has one CounterCells per peer.
                unsafe { &*cells.add(peer) }
            }
            None => &self.peer(peer).live,
        }
    }

    /// `peer`'s cumulative counters over every process (the shared cells
    /// and every counter shard, whether its process lives or not: counts
    /// never go back), with `inflight` as the gauge.
    pub fn counters(&self, peer: usize, inflight: u64) -> PeerCounters {
        let mut c = self.peer(peer).live.load(inflight);
        for s in 0..self.counter_shards {
            c.merge(&self.counter_cells(Some(s), peer).load(0));
        }
        c
    }

    /// Claims a counter shard for process `pid`: a free one, or one whose
    /// process is gone, whose counts it then goes on adding to (they are
    /// cumulative; nothing is handed back). `None` when all are taken.
    pub fn claim_counter_shard(&self, pid: u64) -> Option<usize> {
        (0..self.counter_shards).find(|&s| {
            let (h, _) = self.counter_shard(s);
            let owner = h.owner.load(Ordering::Acquire);
            (owner == 0 || (owner != pid && !process_alive(owner)))
                && h.owner
                    .compare_exchange(owner, pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
        })
    }

    fn shard_count(&self, shard: usize, peer: usize) -> &AtomicI64 {
        assert!(peer < self.peers, "peer slot {peer} out of range");
        let (_, counts) = self.shard(shard);
        // SAFETY: a shard has one count per peer.
        unsafe { &*counts.add(peer) }
    }

    /// The slot counting in flight at `peer`'s address, when shared.
    pub fn shared_address(&self, peer: usize) -> Option<usize> {
        assert!(peer < self.peers, "peer slot {peer} out of range");
        // SAFETY: `shared` has one entry per peer slot (checked in `of`) and
        // lives as long as the configuration.
        unsafe { *self.shared.add(peer) }
    }

    /// Requests in flight at `peer`'s address (over every slot naming it).
    pub fn address_inflight(&self, peer: usize) -> u64 {
        match self.shared_address(peer) {
            Some(a) => self.peer(a).address_inflight.load(Ordering::Relaxed).max(0) as u64,
            None => self.peer(peer).inflight(),
        }
    }

    fn count(&self, peer: usize, delta: i64) {
        self.peer(peer).inflight.fetch_add(delta, Ordering::Relaxed);
        if let Some(a) = self.shared_address(peer) {
            self.peer(a)
                .address_inflight
                .fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Counts a request to `peer` starting (`delta` 1) or ending (-1), in
    /// the peer's gauge (and its address's, when shared) and in this
    /// process's shard.
    pub fn add_inflight(&self, shard: Option<usize>, peer: usize, delta: i64) {
        self.count(peer, delta);
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
                    self.count(p, -n);
                    returned += n;
                }
            }
            h.owner.store(0, Ordering::Release);
        }
        returned
    }
}

/// Whether process `pid` exists (signal 0 checks without sending).
pub(crate) fn process_alive(pid: u64) -> bool {
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
    let bytes = block_size(main.agents.len(), main.total_peers, main.counter_shards);
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
                let bytes = block_size(main.agents.len(), main.total_peers, main.counter_shards);
                block = ngx_slab_alloc(shpool, bytes) as *mut u8;
                if block.is_null() {
                    return NGX_ERROR as ngx_int_t;
                }
                ptr::write_bytes(block, 0, bytes);
                (*shpool).data = block.cast();
            }
            main.block.set(block);
            if fresh {
                // A reload that changed the layout: keep the health the
                // checks found for peers that still exist (before the old
                // zone is retired).
                if let (Some(old), Some(view)) = (
                    main_conf_of_cycle(&*ngx::ffi::ngx_cycle),
                    ZoneView::of(main),
                ) {
                    if !ptr::eq(old, main) {
                        crate::check::inherit_health(old, main, &view);
                    }
                }
            }
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
                p.prev.store(&view.counters(up.slot_base + i, 0));
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
