//! The balancer life cycle, wrapping nginx's round robin.
//!
//! `init_upstream` builds nginx's round-robin peers (so `down`, `backup`,
//! `max_fails`/`fail_timeout`, `max_conns`, `zone`, TLS session reuse and
//! `keepalive` keep working exactly as operators know them) and records the
//! peers of the agent. Per request, `get_peer` first applies a newly
//! published decision to the peers' weights (one atomic load when nothing
//! changed), then lets nginx's smooth weighted round robin choose
//! (`choose=wrr`), makes a power-of-two choice among the same eligible
//! peers (`choose=p2c`) or walks the consistent-hash ring of the request's
//! key to the first eligible peer under its load bound (`choose=hash`,
//! `init_peer` evaluates the key). `free_peer` records the try's outcome
//! in the shared zone and hands over to nginx's round robin.
//!
//! nginx's bookkeeping stays consistent on every path: the module's own
//! work runs before a peer is charged (a panic there falls back to plain
//! round robin) or after nginx's call returned (a panic there loses one
//! sample, never a `conns` count); round robin's `free` always runs.

use core::ffi::c_void;
use core::ptr;

use deep_sched_core::api::effective_weight;
use deep_sched_core::choose::{
    p2c, p2c_second, scale_effective_weight, slow_start_factor, PeerLoad,
};
use deep_sched_core::directive::{ChooseArg, ModeArg, MAX_WEIGHT};
use deep_sched_core::draw::{p2c_drawn, DrawTable, Drawn, Pick};
use deep_sched_core::hash::{Balance, HashFn, Ring};
use ngx::core::Pool;
use ngx::ffi::{
    ngx_conf_t, ngx_current_msec, ngx_http_complex_value, ngx_http_request_t,
    ngx_http_upstream_free_round_robin_peer, ngx_http_upstream_get_round_robin_peer,
    ngx_http_upstream_init_round_robin, ngx_http_upstream_init_round_robin_peer,
    ngx_http_upstream_rr_peer_data_t, ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t,
    ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_peer_connection_t, ngx_rwlock_rlock,
    ngx_rwlock_unlock, ngx_rwlock_wlock, ngx_str_t, ngx_uint_t, NGX_BUSY, NGX_ERROR, NGX_LOG_EMERG,
    NGX_OK, NGX_PEER_FAILED,
};
use ngx::ngx_conf_log_error;

use crate::config::{srv_conf, AgentConf, MainConf, UpstreamConf, UpstreamLocal};
use crate::zone::{PeerSlot, TryOutcome, ZoneView};
use crate::{module, no_unwind, with_rng};

/// Draw weights of `choose=p2c` are the peers' weights times this, so a
/// slow-start factor of 0.1 still changes a weight of 1.
const P2C_WEIGHT_SCALE: f64 = 64.0;

/// Per-request balancer data. nginx's round-robin data comes first so the
/// round-robin functions (and TLS session helpers) can use this struct as
/// theirs.
#[repr(C)]
pub struct PeerData {
    pub rrp: ngx_http_upstream_rr_peer_data_t,
    pub request: *mut ngx_http_request_t,
    pub main: *const MainConf,
    pub agent: usize,
    pub upstream: usize,
    pub choose: ChooseArg,
    /// The upstream's primary peers (the round-robin data may move on to the
    /// backup list).
    pub primary: *mut ngx_http_upstream_rr_peers_t,
    /// Agent-wide index of the peer of the current try, or `usize::MAX`;
    /// set only once the try is counted in flight.
    pub slot: usize,
    /// When the current try started (`ngx_current_msec`).
    pub started_ms: u64,
    /// The agent's decision epoch when the current try was dispatched: its
    /// outcome is charged to that interval (the sample log's `dispatched`).
    pub dispatch_epoch: u64,
    /// Name of the peer chosen last (for `$deep_sched_peer`).
    pub peer_name: ngx_str_t,
    /// `choose=hash`: the key's position on the ring, once evaluated.
    pub key_hash: Option<u32>,
    /// Primary peers whose health the checks may have taken out (0 when
    /// none is down), and their first zone slot: set per pick.
    pub checked: usize,
    pub slots: *const PeerSlot,
}

/// The peers' write lock when they live in a shared zone (the same rule
/// as nginx's `ngx_http_upstream_rr_peers_wlock`), released on drop.
struct PeersLock(*mut ngx_http_upstream_rr_peers_t);

impl PeersLock {
    unsafe fn write(peers: *mut ngx_http_upstream_rr_peers_t) -> Self {
        // SAFETY: peers is a live rr peers list.
        unsafe {
            if !(*peers).shpool.is_null() {
                ngx_rwlock_wlock(&mut (*peers).rwlock);
            }
        }
        Self(peers)
    }

    /// The read lock (several workers may hold it at once).
    unsafe fn read(peers: *mut ngx_http_upstream_rr_peers_t) -> Self {
        // SAFETY: peers is a live rr peers list.
        unsafe {
            if !(*peers).shpool.is_null() {
                ngx_rwlock_rlock(&mut (*peers).rwlock);
            }
        }
        Self(peers)
    }
}

impl Drop for PeersLock {
    fn drop(&mut self) {
        // SAFETY: the lock was taken in `write` on the same list.
        unsafe {
            if !(*self.0).shpool.is_null() {
                ngx_rwlock_unlock(&mut (*self.0).rwlock);
            }
        }
    }
}

/// Iterates a round-robin peer list.
unsafe fn peers_iter(
    peers: *mut ngx_http_upstream_rr_peers_t,
) -> impl Iterator<Item = *mut ngx_http_upstream_rr_peer_t> {
    // SAFETY: the caller holds the list (and its lock when shared).
    let mut p = unsafe { (*peers).peer };
    core::iter::from_fn(move || {
        if p.is_null() {
            return None;
        }
        let cur = p;
        // SAFETY: cur is a live peer of the list.
        p = unsafe { (*cur).next };
        Some(cur)
    })
}

const BITS: usize = 8 * core::mem::size_of::<usize>();

/// Whether peer `i` is marked in a round-robin `tried` bitmap.
unsafe fn tried(rrp: &ngx_http_upstream_rr_peer_data_t, i: usize) -> bool {
    // SAFETY: the bitmap has a bit per peer of the list.
    unsafe { *rrp.tried.add(i / BITS) & (1usize << (i % BITS)) != 0 }
}

unsafe fn set_tried(rrp: &mut ngx_http_upstream_rr_peer_data_t, i: usize, on: bool) {
    // SAFETY: as above.
    unsafe {
        let word = rrp.tried.add(i / BITS);
        if on {
            *word |= 1usize << (i % BITS);
        } else {
            *word &= !(1usize << (i % BITS));
        }
    }
}

/// Configuration time: nginx's round robin first, then our bookkeeping.
pub unsafe extern "C" fn init_upstream(
    cf: *mut ngx_conf_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    no_unwind(NGX_ERROR as ngx_int_t, || {
        // SAFETY: called by nginx with a live cf and upstream conf.
        unsafe { init_upstream_inner(cf, us) }
    })
}

unsafe fn init_upstream_inner(
    cf: *mut ngx_conf_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: cf and us are live.
    if unsafe { ngx_http_upstream_init_round_robin(cf, us) } != NGX_OK as ngx_int_t {
        return NGX_ERROR as ngx_int_t;
    }
    // SAFETY: us is live.
    let Some(scf) = srv_conf(unsafe { &*us }) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: configuration time: one process, one thread, and no other
    // reference to the main conf (set by the directive) is live.
    let main = unsafe { &mut *(scf.main as *mut MainConf) };
    let agent = &mut main.agents[scf.agent];
    let policy = agent.policy.clone();
    let key = agent.key.clone();
    let Some(up) = agent.upstreams.iter_mut().find(|u| u.index == scf.upstream) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: init_round_robin stored the primary peers in us->peer.data.
    let peers = unsafe { (*us).peer.data as *mut ngx_http_upstream_rr_peers_t };
    up.peers.clear();
    up.configured_weights.clear();
    up.max_fails.clear();
    up.configured_down.clear();
    // SAFETY: us is live; `zone` sets shm_zone while parsing.
    up.has_zone = unsafe { !(*us).shm_zone.is_null() };
    // SAFETY: configuration time, single process, no lock needed.
    for p in unsafe { peers_iter(peers) } {
        // SAFETY: p is a live peer.
        let p = unsafe { &*p };
        up.peers
            .push(String::from_utf8_lossy(p.name.as_bytes()).into_owned());
        up.configured_weights
            .push(u32::try_from(p.weight).unwrap_or(1).max(1));
        up.max_fails.push(u32::try_from(p.max_fails).unwrap_or(1));
        up.configured_down.push(p.down != 0);
    }
    // SAFETY: cf, us and the primary peers are live.
    if !unsafe { crate::check::init_upstream(cf, us, scf, up, peers) } {
        return NGX_ERROR as ngx_int_t;
    }
    if let Some(policy) = policy {
        let names: Vec<&str> = up.peers.iter().map(String::as_str).collect();
        // Peers are matched by name: only an upstream the policy does not
        // list is an error; other differences are served by rule and said.
        match policy.check_upstream(&up.name, &names) {
            Err(e) => {
                ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "{} (upstream \"{}\" in {})",
                    e,
                    up.name,
                    key
                );
                return NGX_ERROR as ngx_int_t;
            }
            Ok((_, m)) => {
                if let Some(w) = policy.mismatch_warning(&up.name, &m) {
                    ngx_conf_log_error!(
                        ngx::ffi::NGX_LOG_WARN,
                        cf,
                        "deep_sched: policy \"{}\" and upstream \"{}\" differ: {}",
                        key,
                        up.name,
                        w
                    );
                }
            }
        }
    }
    up.initialised = true;
    // SAFETY: us is live.
    unsafe { (*us).peer.init = Some(init_peer) };
    NGX_OK as ngx_int_t
}

/// Per request: nginx's round-robin data inside ours, our callbacks.
unsafe extern "C" fn init_peer(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    no_unwind(NGX_ERROR as ngx_int_t, || {
        // SAFETY: called by nginx with a live request and upstream conf.
        unsafe { init_peer_inner(r, us) }
    })
}

unsafe fn init_peer_inner(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: us is live.
    let Some(scf) = srv_conf(unsafe { &*us }) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: r is live; its pool outlives the upstream request.
    unsafe {
        let pool = Pool::from_ngx_pool((*r).pool);
        let pd = pool.calloc_type::<PeerDataRaw>() as *mut PeerData;
        if pd.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        let u = (*r).upstream;
        (*u).peer.data = pd.cast();
        if ngx_http_upstream_init_round_robin_peer(r, us) != NGX_OK as ngx_int_t {
            return NGX_ERROR as ngx_int_t;
        }
        (*pd).request = r;
        (*pd).main = scf.main;
        (*pd).agent = scf.agent;
        (*pd).upstream = scf.upstream;
        (*pd).choose = scf.choose;
        (*pd).primary = (*pd).rrp.peers;
        (*pd).slot = usize::MAX;
        (*pd).key_hash = None;
        if scf.choose == ChooseArg::Hash && !scf.key.is_null() {
            // As nginx's hash: the key is evaluated once, in the request's pool.
            let mut key = ngx_str_t::default();
            if ngx_http_complex_value(r, scf.key, &mut key) != NGX_OK as ngx_int_t {
                return NGX_ERROR as ngx_int_t;
            }
            // An empty key is balanced by round robin, as nginx's hash does.
            if key.len > 0 {
                (*pd).key_hash = Some(HashFn::Xxh3.key(key.as_bytes()));
            }
        }
        (*u).peer.get = Some(get_peer);
        (*u).peer.free = Some(free_peer);
        // For $deep_sched_state / $deep_sched_peer.
        *(*r).ctx.add(module().ctx_index) = pd.cast();
    }
    NGX_OK as ngx_int_t
}

/// Same size and alignment as [`PeerData`], but `Copy` so the pool can
/// allocate it zeroed (a zeroed `PeerData` is valid: null pointers, zero
/// indices, `ChooseArg::Wrr` is discriminant 0).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct PeerDataRaw([u8; core::mem::size_of::<PeerData>()]);

/// This worker's per-upstream state, built on its first request of the
/// cycle (the list is final by then: with a `zone`, nginx copied it into
/// shared memory at start-up): the peers by index, their index by address,
/// the scratch buffers, and the draw table of the configured weights.
unsafe fn ensure_local(
    local: &mut UpstreamLocal,
    up: &UpstreamConf,
    primary: *mut ngx_http_upstream_rr_peers_t,
) {
    if !local.peers.is_empty() || up.peers.is_empty() {
        return;
    }
    // SAFETY: primary is the live primary list; its links never change
    // at run time (no `resolve` under deep_sched).
    local.peers = unsafe { peers_iter(primary) }
        .take(up.peers.len())
        .collect();
    local.index = local
        .peers
        .iter()
        .enumerate()
        .map(|(i, &p)| (p as usize, i))
        .collect();
    local.weights = vec![0; local.peers.len()];
    local.loads = vec![PeerLoad::default(); local.peers.len()];
    local.masked = Vec::with_capacity(local.peers.len());
    local.draw = Some(DrawTable::new(&up.configured_weights));
}

/// `choose=hash`: the ring of this worker's upstream, built on its first
/// request from the weights round robin has now (the configured ones until
/// a decision is applied; in observe mode, for good).
unsafe fn ensure_ring(
    local: &mut UpstreamLocal,
    up: &UpstreamConf,
    peers: *mut ngx_http_upstream_rr_peers_t,
) {
    if local.ring.is_some() || local.peers.is_empty() {
        return;
    }
    let names: Vec<&str> = up.peers.iter().map(String::as_str).collect();
    let mut ring = Ring::new(HashFn::Xxh3, &names);
    {
        // SAFETY: the read lock is held while the weights are read.
        let _lock = unsafe { PeersLock::read(peers) };
        // SAFETY: local.peers are the live primary peers.
        ring.rebuild(|i| unsafe { (*local.peers[i]).weight }.max(0) as u32);
    }
    local.ring = Some(ring);
}

/// Applies the agent's published weights to the primary peers when a new
/// decision was published since this worker last looked, and the runtime
/// API's changes (drain, down, weight, pause, pin) when there were any
/// (one more load). Round robin's failure back-off (`effective_weight`
/// below `weight`) is kept in proportion, and `choose=p2c`'s draw table or
/// `choose=hash`'s ring is
/// rebuilt. A read that keeps meeting the writer changes nothing: the next
/// request tries again.
unsafe fn sync_weights(
    agent: &AgentConf,
    up: &UpstreamConf,
    local: &mut UpstreamLocal,
    view: &ZoneView,
    peers: *mut ngx_http_upstream_rr_peers_t,
    choose: ChooseArg,
) {
    use core::sync::atomic::Ordering::{Acquire, Relaxed};
    let slot = view.agent(agent.index);
    let admin = slot.admin_epoch.load(Acquire);
    // Observe only: nginx's own weights, untouched (so failures reduce
    // effective weights exactly as plain round robin does) until the
    // runtime API changes something.
    let observe = matches!(agent.args.mode, ModeArg::Observe);
    let epoch = slot.epoch();
    if admin == up.applied_admin.get() && (observe || epoch == up.applied_epoch.get()) {
        return;
    }
    let weights = &mut local.weights;
    let published = if observe {
        weights.copy_from_slice(&up.configured_weights);
        None
    } else {
        let Some(p) = slot.read(|b| {
            for (i, w) in weights.iter_mut().enumerate() {
                *w = view.peer(up.slot_base + i).weight[b].load(Relaxed);
            }
        }) else {
            return;
        };
        Some(p)
    };
    let paused = slot.paused.load(Relaxed) != 0;
    let pinned = slot.pinned.load(Relaxed) != 0;
    for (i, w) in weights.iter_mut().enumerate() {
        let s = view.peer(up.slot_base + i);
        *w = effective_weight(
            s.admin_weight.load(Relaxed),
            pinned.then(|| s.pinned_weight.load(Relaxed)),
            paused,
            up.configured_weights[i],
            *w,
        );
    }
    // SAFETY: the write lock is held while weights change (as nginx's own
    // code does); local.peers are the live primary peers.
    unsafe {
        let _lock = PeersLock::write(peers);
        let mut total = 0;
        for (i, (&p, &w)) in local.peers.iter().zip(weights.iter()).enumerate() {
            let p = &mut *p;
            let w = w.min(MAX_WEIGHT) as ngx_int_t;
            if w > 0 {
                p.effective_weight =
                    scale_effective_weight(p.effective_weight as i64, p.weight as i64, w as i64)
                        as ngx_int_t;
                p.weight = w;
            }
            // Drain and down through the runtime API: round robin and p2c
            // both skip a `down` peer; requests in flight finish.
            let held = view.peer(up.slot_base + i).admin.load(Relaxed) != 0;
            p.down = ngx_uint_t::from(up.configured_down[i] || held);
            total += p.weight as ngx_uint_t;
        }
        if choose == ChooseArg::Hash {
            // The ring follows the weights applied (a 0 keeps the old one).
            for (w, &p) in weights.iter_mut().zip(&local.peers) {
                *w = (*p).weight as u32;
            }
        }
        (*peers).total_weight = total;
        (*peers).set_weighted(1);
    }
    if choose == ChooseArg::P2c {
        // Once per decision and worker: the only allocation outside start-up.
        local.draw = Some(DrawTable::new(&local.weights));
    }
    if let (ChooseArg::Hash, Some(ring)) = (choose, local.ring.as_mut()) {
        // Once per decision and worker, in place, outside the peers' lock.
        ring.rebuild(|i| local.weights[i]);
    }
    up.applied_admin.set(admin);
    if let Some(p) = published {
        up.applied_epoch.set(p.epoch);
    }
}

/// What the module's part of a pick decided.
enum Plan {
    /// p2c charged this peer (index in the primary list).
    Picked(usize),
    /// Round robin picks; when `masked`, peers held back for slow start
    /// (in the upstream's `local.masked`) must be released afterwards.
    RoundRobin { masked: bool },
}

unsafe extern "C" fn get_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: data is the PeerData set in init_peer; pc is live.
    let pd = unsafe { &mut *(data as *mut PeerData) };
    // Nothing is charged yet: a panic here falls back to round robin.
    let plan = no_unwind(Plan::RoundRobin { masked: false }, || {
        // SAFETY: pc and pd are live.
        unsafe { plan_pick(pc, pd) }
    });
    let (rc, picked) = match plan {
        Plan::Picked(i) => (NGX_OK as ngx_int_t, Some(i)),
        Plan::RoundRobin { masked } => {
            // SAFETY: pc and rrp are live.
            let mut rc =
                unsafe { ngx_http_upstream_get_round_robin_peer(pc, (&raw mut pd.rrp).cast()) };
            // Round robin reset the bitmap if it moved on to the backups.
            if masked && pd.rrp.peers == pd.primary {
                // SAFETY: the bits were set by plan_pick on this list.
                no_unwind((), || unsafe { unmask(pd) });
                if rc == NGX_BUSY as ngx_int_t {
                    // Only ramping (or, without backups, checked-down)
                    // peers were left: better them than a 502.
                    // SAFETY: as above.
                    rc = unsafe {
                        ngx_http_upstream_get_round_robin_peer(pc, (&raw mut pd.rrp).cast())
                    };
                }
            }
            (rc, None)
        }
    };
    if rc == NGX_OK as ngx_int_t {
        // The peer is charged; a panic now only loses this try's sample.
        no_unwind((), || {
            // SAFETY: after a successful get, rrp.current is the chosen peer.
            unsafe { count_try(pd, picked) }
        });
    }
    rc
}

/// The module's part of a pick, before any peer is charged.
unsafe fn plan_pick(pc: *mut ngx_peer_connection_t, pd: &mut PeerData) -> Plan {
    let rr = Plan::RoundRobin { masked: false };
    // SAFETY: main conf of the cycle this request belongs to.
    let main = unsafe { &*pd.main };
    let agent = &main.agents[pd.agent];
    let (Some(up), Some(view)) = (agent.upstream(pd.upstream), ZoneView::of(main)) else {
        return rr;
    };
    let mut local = up.local.borrow_mut();
    // SAFETY: primary is the live primary peer list of this upstream.
    unsafe {
        ensure_local(&mut local, up, pd.primary);
        if pd.choose == ChooseArg::Hash {
            ensure_ring(&mut local, up, pd.primary);
        }
        sync_weights(agent, up, &mut local, &view, pd.primary, pd.choose);
    }
    // SAFETY: ngx_current_msec is the event loop's clock.
    let now = unsafe { ngx_current_msec } as u64;
    // Active health checks: one load tells whether any peer is down.
    pd.checked = 0;
    if up.check.is_some()
        && !up.peers.is_empty()
        && view
            .agent(agent.index)
            .checks_down
            .load(core::sync::atomic::Ordering::Relaxed)
            > 0
    {
        pd.checked = local.peers.len().min(up.peers.len());
        pd.slots = view.peer(up.slot_base);
    }
    local.masked.clear();
    match pd.choose {
        // SAFETY: pc and rrp are live.
        ChooseArg::P2c => match unsafe { p2c_pick(pc, pd, agent, up, &mut local, &view, now) } {
            Some(i) => Plan::Picked(i),
            // SAFETY: rrp and the primary list are live.
            None => unsafe { mask_down(pd, &mut local) },
        },
        // SAFETY: pc and rrp are live.
        ChooseArg::Hash => {
            match unsafe { hash_pick(pc, pd, agent, up, &mut local, &view, main.shard.get()) } {
                Some(i) => Plan::Picked(i),
                // No key (or no primary peer left): round robin, without the
                // peers the checks took out.
                // SAFETY: rrp and the primary list are live.
                None => unsafe { mask_down(pd, &mut local) },
            }
        }
        ChooseArg::Wrr => {
            let ramping = agent.args.slow_start_ms > 0
                && now
                    < view
                        .agent(agent.index)
                        .slow_start_until_ms
                        .load(core::sync::atomic::Ordering::Relaxed);
            if ramping {
                // SAFETY: rrp and the primary list are live.
                unsafe { mask_ramping(pd, agent, up, &mut local, &view, now) };
            }
            // SAFETY: as above.
            unsafe { mask_down(pd, &mut local) }
        }
    }
}

/// Whether the active health checks took primary peer `i` out.
fn checked_down(pd: &PeerData, i: usize) -> bool {
    // SAFETY: `slots` is the upstream's first peer slot in the mapped zone,
    // followed by `checked` more (set by plan_pick for this pick).
    i < pd.checked && unsafe { (*pd.slots.add(i)).health.is_down() }
}

/// Active health checks under round robin: holds the peers the checks took
/// out back from this pick (marks them tried, as slow start does), on the
/// primary list only (round robin resets the bitmap when it moves on to
/// the backups). Returns the round-robin plan, `masked` when any peer is
/// held back (for slow start or health).
unsafe fn mask_down(pd: &mut PeerData, local: &mut UpstreamLocal) -> Plan {
    if pd.rrp.peers == pd.primary {
        for i in 0..pd.checked {
            // SAFETY: the bitmap covers the primary list.
            if checked_down(pd, i) && unsafe { !tried(&pd.rrp, i) } {
                // SAFETY: as above.
                unsafe { set_tried(&mut pd.rrp, i, true) };
                local.masked.push(i);
            }
        }
    }
    Plan::RoundRobin {
        masked: !local.masked.is_empty(),
    }
}

/// Slow start under round robin: each peer in slow start is held back from
/// this pick (marked tried) with probability `1 − factor`, so its share is
/// about `factor` of its weight's. Not with backups (round robin would move
/// on to them rather than to a ramping primary). Adds them to
/// `local.masked`; returns whether any was.
unsafe fn mask_ramping(
    pd: &mut PeerData,
    agent: &AgentConf,
    up: &UpstreamConf,
    local: &mut UpstreamLocal,
    view: &ZoneView,
    now: u64,
) -> bool {
    // SAFETY: primary is live; `next` is its backup list.
    if pd.rrp.peers != pd.primary || unsafe { !(*pd.primary).next.is_null() } {
        return false;
    }
    for i in 0..local.peers.len() {
        let since = view
            .peer(up.slot_base + i)
            .slow_start_since_ms
            .load(core::sync::atomic::Ordering::Relaxed);
        let f = slow_start_factor(now, since, agent.args.slow_start_ms);
        // SAFETY: the bitmap covers the primary list.
        if f < 1.0 && unsafe { !tried(&pd.rrp, i) } && with_rng(rand::Rng::gen::<f64>) >= f {
            // SAFETY: as above.
            unsafe { set_tried(&mut pd.rrp, i, true) };
            local.masked.push(i);
        }
    }
    !local.masked.is_empty()
}

unsafe fn unmask(pd: &mut PeerData) {
    // SAFETY: main conf of the cycle this request belongs to.
    let main = unsafe { &*pd.main };
    let Some(up) = main.agents[pd.agent].upstream(pd.upstream) else {
        return;
    };
    for &i in &up.local.borrow().masked {
        // SAFETY: the bits were set on the primary list's bitmap, which
        // round robin only resets when it moves to backups (never with a
        // mask: see mask_ramping).
        unsafe { set_tried(&mut pd.rrp, i, false) };
    }
}

/// Whether round robin would consider peer `i` now, and the peer.
unsafe fn eligible(
    pd: &PeerData,
    p: *mut ngx_http_upstream_rr_peer_t,
    i: usize,
    now: ngx::ffi::time_t,
) -> bool {
    // SAFETY: p is a live peer of the primary list, read under its lock.
    let peer = unsafe { &*p };
    let failed = peer.max_fails != 0
        && peer.fails >= peer.max_fails
        && now - peer.checked <= peer.fail_timeout;
    let full = peer.max_conns != 0 && peer.conns >= peer.max_conns;
    // SAFETY: the bitmap covers the primary list.
    !unsafe { tried(&pd.rrp, i) } && peer.down == 0 && !failed && !full && !checked_down(pd, i)
}

/// What p2c knows of peer `i`: its load (weight = round robin's
/// `effective_weight`) and the share multiplier of its draws.
fn peer_load(
    peer: &ngx_http_upstream_rr_peer_t,
    i: usize,
    agent: &AgentConf,
    up: &UpstreamConf,
    view: &ZoneView,
    now_ms: u64,
) -> (PeerLoad, f64) {
    let s = view.peer(up.slot_base + i);
    let ramp = slow_start_factor(
        now_ms,
        s.slow_start_since_ms
            .load(core::sync::atomic::Ordering::Relaxed),
        agent.args.slow_start_ms,
    );
    let eff = peer.effective_weight.max(1) as f64;
    let weight = eff * P2C_WEIGHT_SCALE;
    let load = PeerLoad {
        weight: weight as u32,
        draw_weight: (weight * ramp).round().max(1.0) as u32,
        inflight: view.address_inflight(up.slot_base + i),
        latency_ewma_ms: s.latency_ms(now_ms),
        eligible: true,
    };
    // The table draws by the published weight; keep the draw with the
    // share of it the peer has now.
    let accept = ramp * (eff / peer.weight.max(1) as f64).min(1.0);
    (load, accept)
}

/// Power of two choices among the eligible primary peers, charging the
/// chosen one as round robin would; `None` when none is eligible (the
/// caller then lets round robin try the backups).
///
/// Two draws from the decision's alias table under the peers' *read* lock,
/// reading only the drawn peers (`deep_sched_core::draw`); the write lock
/// only to charge the winner. When draws keep being rejected (most peers
/// down or full) it scans all peers under the write lock.
unsafe fn p2c_pick(
    pc: *mut ngx_peer_connection_t,
    pd: &mut PeerData,
    agent: &AgentConf,
    up: &UpstreamConf,
    local: &mut UpstreamLocal,
    view: &ZoneView,
    now_ms: u64,
) -> Option<usize> {
    if pd.rrp.peers != pd.primary || local.peers.is_empty() {
        return None;
    }
    // SAFETY: pc is live; as in nginx's round robin, a new try starts
    // without a cached connection (keepalive, if any, sets one after us).
    unsafe {
        (*pc).set_cached(0);
        (*pc).connection = ptr::null_mut();
    }
    let peers = pd.primary;
    let now = ngx::ffi::ngx_time();
    let drawn = match &local.draw {
        Some(table) => {
            // SAFETY: the read lock is held while the drawn peers are read.
            let _lock = unsafe { PeersLock::read(peers) };
            with_rng(|rng| {
                p2c_drawn(
                    table,
                    |i| {
                        let p = *local.peers.get(i)?;
                        // SAFETY: p is a live peer, read under the lock.
                        if !unsafe { eligible(pd, p, i, now) } {
                            return None;
                        }
                        // SAFETY: as above.
                        let (load, accept) = peer_load(unsafe { &*p }, i, agent, up, view, now_ms);
                        Some(Drawn { load, accept })
                    },
                    rng,
                )
            })
        }
        None => Pick::Scan,
    };
    // SAFETY: the write lock is held while the chosen peer is charged (and
    // while all are inspected on the fallback), as in nginx's round robin.
    unsafe {
        let _lock = PeersLock::write(peers);
        let best = match drawn {
            // Still eligible now that we hold the write lock (another
            // worker may have filled its max_conns in between)?
            Pick::Peer(i) if eligible(pd, local.peers[i], i, now) => i,
            other => {
                for (i, &p) in local.peers.iter().enumerate() {
                    local.loads[i] = if eligible(pd, p, i, now) {
                        peer_load(&*p, i, agent, up, view, now_ms).0
                    } else {
                        PeerLoad::default()
                    };
                }
                match other {
                    // The first draw stands; only the second is scanned.
                    Pick::ScanSecond(a) if local.loads[a].eligible => {
                        with_rng(|rng| p2c_second(&local.loads, a, rng))
                    }
                    _ => with_rng(|rng| p2c(&local.loads, rng))?,
                }
            }
        };
        charge(pc, pd, local.peers[best], best, now);
        Some(best)
    }
}

/// Charges primary peer `i` with the try, as round robin does with the
/// peer it picked. The caller holds the peers' write lock.
unsafe fn charge(
    pc: *mut ngx_peer_connection_t,
    pd: &mut PeerData,
    p: *mut ngx_http_upstream_rr_peer_t,
    i: usize,
    now: ngx::ffi::time_t,
) {
    // SAFETY: p is a live peer of the primary list, under the write lock;
    // pc is live; the bitmap covers the primary list.
    unsafe {
        let peer = &mut *p;
        // Round robin's recovery of a backed-off peer, one step per pick.
        if peer.effective_weight < peer.weight {
            peer.effective_weight += 1;
        }
        pd.rrp.current = peer;
        #[cfg(ngx_peer_refs)]
        {
            peer.refs += 1;
        }
        set_tried(&mut pd.rrp, i, true);
        if now - peer.checked > peer.fail_timeout {
            peer.checked = now;
        }
        (*pc).sockaddr = peer.sockaddr;
        (*pc).socklen = peer.socklen;
        (*pc).name = &mut peer.name;
        peer.conns += 1;
    }
}

/// Consistent hashing with bounded loads (`deep_sched_core::hash`): under
/// the peers' write lock (as nginx's `hash ... consistent`), every primary
/// peer's eligibility (round robin's rules, `eligible`) and requests in
/// flight at its address (all workers', from the zone) are read, and the
/// ring is walked from the key's point to the first eligible peer under
/// its bound. A retry finds the tried peer ineligible and walks on to the
/// next. The chosen peer is counted in flight before the lock is released,
/// so with a `zone` no two workers both see room under the same bound.
/// `None` (round robin, then backups) when no key or no peer.
unsafe fn hash_pick(
    pc: *mut ngx_peer_connection_t,
    pd: &mut PeerData,
    agent: &AgentConf,
    up: &UpstreamConf,
    local: &mut UpstreamLocal,
    view: &ZoneView,
    shard: Option<usize>,
) -> Option<usize> {
    let h = pd.key_hash?;
    if pd.rrp.peers != pd.primary || local.peers.is_empty() {
        return None;
    }
    let UpstreamLocal {
        peers, loads, ring, ..
    } = local;
    let ring = ring.as_ref()?;
    // SAFETY: pc is live; a new try starts without a cached connection.
    unsafe {
        (*pc).set_cached(0);
        (*pc).connection = ptr::null_mut();
    }
    let now = ngx::ffi::ngx_time();
    // SAFETY: the write lock is held while the peers are read and the
    // chosen one charged.
    unsafe {
        let _lock = PeersLock::write(pd.primary);
        // Plain consistent hashing reads no in-flight count.
        let bounded = agent.args.balance != Balance::Off;
        for (i, &p) in peers.iter().enumerate() {
            loads[i] = PeerLoad {
                eligible: eligible(pd, p, i, now),
                inflight: if bounded {
                    view.address_inflight(up.slot_base + i)
                } else {
                    0
                },
                ..PeerLoad::default()
            };
        }
        let best = ring.pick(h, loads, agent.args.balance)?;
        charge(pc, pd, peers[best], best, now);
        view.add_inflight(shard, up.slot_base + best, 1);
        pd.started_ms = ngx_current_msec as u64;
        pd.dispatch_epoch = view.agent(agent.index).epoch();
        pd.slot = up.slot_base + best;
        Some(best)
    }
}

/// After a successful pick: which slot the try is at, counted in flight.
unsafe fn count_try(pd: &mut PeerData, picked: Option<usize>) {
    // SAFETY: main conf of the cycle this request belongs to; rrp.current
    // is the chosen peer.
    unsafe {
        let main = &*pd.main;
        let current = pd.rrp.current;
        pd.peer_name = (*current).name;
        if pd.slot != usize::MAX {
            // Already counted in flight by the pick (choose=hash).
            return;
        }
        let agent = &main.agents[pd.agent];
        let (Some(up), Some(view)) = (agent.upstream(pd.upstream), ZoneView::of(main)) else {
            return;
        };
        let index = match picked {
            Some(i) => Some(i),
            // O(peers) without a lock: the primary list's links never change
            // at run time (no `resolve` under deep_sched).
            None if pd.rrp.peers == pd.primary => peers_iter(pd.primary).position(|p| p == current),
            None => None,
        };
        let Some(i) = index.filter(|&i| i < up.peers.len()) else {
            return;
        };
        view.add_inflight(main.shard.get(), up.slot_base + i, 1);
        pd.started_ms = ngx_current_msec as u64;
        pd.dispatch_epoch = view.agent(agent.index).epoch();
        pd.slot = up.slot_base + i;
    }
}

unsafe extern "C" fn free_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
    state: ngx_uint_t,
) {
    // SAFETY: data is our PeerData; pc is live.
    let pd = unsafe { &mut *(data as *mut PeerData) };
    no_unwind((), || {
        // SAFETY: the request and the main conf are live.
        unsafe { record_try(pd, state) }
    });
    // Always: round robin's own accounting (`conns`, `fails`, TLS session).
    // SAFETY: hand over to nginx's round robin with its own data.
    unsafe { ngx_http_upstream_free_round_robin_peer(pc, (&raw mut pd.rrp).cast(), state) };
}

/// Records the finished try in the zone and starts a slow start when the
/// peer is back from failure.
unsafe fn record_try(pd: &mut PeerData, state: ngx_uint_t) {
    let slot = core::mem::replace(&mut pd.slot, usize::MAX);
    if slot == usize::MAX {
        return;
    }
    // SAFETY: main conf and request are live for the request's lifetime.
    unsafe {
        let main = &*pd.main;
        let Some(view) = ZoneView::of(main) else {
            return;
        };
        view.add_inflight(main.shard.get(), slot, -1);
        let now = ngx_current_msec as u64;
        let u = (*pd.request).upstream;
        let st = if u.is_null() {
            ptr::null_mut()
        } else {
            (*u).state
        };
        let mut outcome = TryOutcome {
            status_class: None,
            failed: state & NGX_PEER_FAILED as ngx_uint_t != 0,
            response_msec: now.saturating_sub(pd.started_ms),
            header_msec: None,
            in_bytes: 0,
            out_bytes: 0,
        };
        if !st.is_null() {
            let st = &*st;
            if (100..600).contains(&st.status) {
                outcome.status_class = Some(st.status / 100 - 1);
            }
            if st.response_time != ngx::ffi::ngx_msec_t::MAX {
                outcome.response_msec = st.response_time as u64;
            }
            if st.header_time != ngx::ffi::ngx_msec_t::MAX {
                outcome.header_msec = Some(st.header_time as u64);
            }
            outcome.in_bytes = u64::try_from(st.bytes_received).unwrap_or(0);
            outcome.out_bytes = u64::try_from(st.bytes_sent).unwrap_or(0);
        }
        let agent = &main.agents[pd.agent];
        let Some(up) = agent.upstream(pd.upstream) else {
            return;
        };
        let i = slot - up.slot_base;
        let max_fails = up.max_fails.get(i).copied().unwrap_or(1);
        let cells = view.counter_cells(main.counter_shard.get(), slot);
        let back = view.peer(slot).record_into(cells, &outcome, now, max_fails);
        let epoch = view.agent(agent.index).epoch();
        view.peer(slot)
            .record_dispatch(&outcome, pd.dispatch_epoch, epoch);
        if back && agent.args.slow_start_ms > 0 {
            view.peer(slot)
                .slow_start_since_ms
                .store(now.max(1), core::sync::atomic::Ordering::Relaxed);
            view.agent(agent.index).slow_start_until_ms.fetch_max(
                now + agent.args.slow_start_ms,
                core::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}
