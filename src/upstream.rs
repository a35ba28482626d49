//! The balancer life cycle, wrapping nginx's round robin.
//!
//! `init_upstream` builds nginx's round-robin peers (so `down`, `backup`,
//! `max_fails`/`fail_timeout`, `max_conns`, `slow_start`, `zone`, TLS
//! session reuse and `keepalive` keep working exactly as operators know
//! them) and records the peers of the agent. Per request, `get_peer`
//! first applies a newly published decision to the peers' weights (one
//! atomic load when nothing changed), then lets nginx's smooth weighted
//! round robin choose (`choose=wrr`) or makes a power-of-two choice among
//! the same eligible peers (`choose=p2c`). `free_peer` records the try's
//! outcome in the shared zone and hands over to nginx's round robin.

use core::ffi::c_void;
use core::ptr;

use deep_sched_core::choose::{p2c, PeerLoad};
use deep_sched_core::directive::{ChooseArg, ModeArg};
use ngx::core::Pool;
use ngx::ffi::{
    ngx_conf_t, ngx_current_msec, ngx_http_request_t, ngx_http_upstream_free_round_robin_peer,
    ngx_http_upstream_get_round_robin_peer, ngx_http_upstream_init_round_robin,
    ngx_http_upstream_init_round_robin_peer, ngx_http_upstream_rr_peer_data_t,
    ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t, ngx_http_upstream_srv_conf_t,
    ngx_int_t, ngx_peer_connection_t, ngx_rwlock_rlock, ngx_rwlock_unlock, ngx_rwlock_wlock,
    ngx_str_t, ngx_uint_t, NGX_BUSY, NGX_ERROR, NGX_LOG_EMERG, NGX_OK, NGX_PEER_FAILED,
};
use ngx::ngx_conf_log_error;

use crate::directive::{AgentConf, MainConf, SrvConf, UpstreamConf, MAX_PEERS};
use crate::zone::{TryOutcome, ZoneView};
use crate::{module, no_unwind};

/// Per-request balancer data. nginx's round-robin data comes first so the
/// round-robin functions (and TLS session helpers) can use this struct as
/// theirs.
#[repr(C)]
pub struct PeerData {
    pub rrp: ngx_http_upstream_rr_peer_data_t,
    pub request: *mut ngx_http_request_t,
    pub main: *mut MainConf,
    pub agent: usize,
    pub upstream: usize,
    pub choose: ChooseArg,
    /// The upstream's primary peers (the round-robin data may move on to the
    /// backup list).
    pub primary: *mut ngx_http_upstream_rr_peers_t,
    /// Agent-wide index of the peer of the current try, or `usize::MAX`.
    pub slot: usize,
    /// When the current try started (`ngx_current_msec`).
    pub started_ms: u64,
    /// Name of the peer chosen last (for `$deep_sched_peer`).
    pub peer_name: ngx_str_t,
}

struct PeersLock(*mut ngx_http_upstream_rr_peers_t);

impl PeersLock {
    /// Takes the peers' write lock when they live in a shared zone (the
    /// same rule as nginx's `ngx_http_upstream_rr_peers_wlock`).
    unsafe fn write(peers: *mut ngx_http_upstream_rr_peers_t) -> Self {
        // SAFETY: peers is a live rr peers list.
        unsafe {
            if !(*peers).shpool.is_null() {
                ngx_rwlock_wlock(&mut (*peers).rwlock);
            }
        }
        Self(peers)
    }

    unsafe fn read(peers: *mut ngx_http_upstream_rr_peers_t) -> Self {
        // SAFETY: as above.
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
        // SAFETY: the lock was taken in `write`/`read` on the same list.
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

fn srv_conf(us: *mut ngx_http_upstream_srv_conf_t) -> Option<&'static mut SrvConf> {
    // SAFETY: us is a live upstream conf whose srv_conf array has this
    // module's conf at ctx_index (created by create_srv_conf).
    unsafe {
        let conf = (*us).srv_conf;
        if conf.is_null() {
            return None;
        }
        (*conf.add(module().ctx_index) as *mut SrvConf).as_mut()
    }
}

fn find_upstream(agent: &mut AgentConf, index: usize) -> Option<&mut UpstreamConf> {
    agent.upstreams.iter_mut().find(|u| u.index == index)
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
    let Some(scf) = srv_conf(us) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: main was set by the directive to this cycle's main conf.
    let main = unsafe { &mut *scf.main };
    let agent = &mut main.agents[scf.agent];
    let policy = agent.policy.clone();
    let key = agent.key.clone();
    let Some(up) = find_upstream(agent, scf.upstream) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: init_round_robin stored the primary peers in us->peer.data.
    let peers = unsafe { (*us).peer.data as *mut ngx_http_upstream_rr_peers_t };
    up.peers.clear();
    up.configured_weights.clear();
    // SAFETY: configuration time, single process, no lock needed.
    for p in unsafe { peers_iter(peers) } {
        // SAFETY: p is a live peer.
        let (name, weight) = unsafe { (&(*p).name, (*p).weight) };
        up.peers
            .push(String::from_utf8_lossy(name.as_bytes()).into_owned());
        up.configured_weights
            .push(u32::try_from(weight).unwrap_or(1).max(1));
    }
    if up.peers.len() > MAX_PEERS {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "upstream \"{}\" has {} peers; deep_sched supports at most {}",
            up.name,
            up.peers.len(),
            MAX_PEERS
        );
        return NGX_ERROR as ngx_int_t;
    }
    if let Some(policy) = policy {
        let names: Vec<&str> = up.peers.iter().map(String::as_str).collect();
        if let Err(e) = policy.check_upstream(&up.name, &names) {
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
    let Some(scf) = srv_conf(us) else {
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

/// Applies the agent's published weights to the primary peers when a new
/// decision was published since this worker last looked.
unsafe fn sync_weights(
    agent: &AgentConf,
    up: &UpstreamConf,
    view: &ZoneView,
    peers: *mut ngx_http_upstream_rr_peers_t,
) {
    if matches!(agent.args.mode, ModeArg::Observe) {
        // Observe only: nginx's own weights, untouched (so failures reduce
        // effective weights exactly as plain round robin does).
        return;
    }
    let slot = view.agent(agent.index);
    let epoch = slot.epoch();
    if epoch == up.applied_epoch.get() {
        return;
    }
    let n = up.peers.len().min(MAX_PEERS);
    let mut weights = [0u32; MAX_PEERS];
    let published = slot.read(|| {
        for (i, w) in weights.iter_mut().enumerate().take(n) {
            *w = view
                .peer(up.slot_base + i)
                .weight
                .load(core::sync::atomic::Ordering::Relaxed);
        }
    });
    // SAFETY: peers is the live primary list; the write lock is held while
    // weights change (as nginx's own code does).
    unsafe {
        let _lock = PeersLock::write(peers);
        let mut total = 0;
        for (i, p) in peers_iter(peers).enumerate().take(n) {
            let w = weights[i];
            if w > 0 {
                (*p).weight = w as ngx_int_t;
                (*p).effective_weight = w as ngx_int_t;
            }
            total += (*p).weight as ngx_uint_t;
        }
        (*peers).total_weight = total;
        (*peers).set_weighted(1);
    }
    up.applied_epoch.set(published.epoch);
}

unsafe extern "C" fn get_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    no_unwind(NGX_BUSY as ngx_int_t, || {
        // SAFETY: data is the PeerData set in init_peer; pc is live.
        unsafe { get_peer_inner(pc, &mut *(data as *mut PeerData)) }
    })
}

unsafe fn get_peer_inner(pc: *mut ngx_peer_connection_t, pd: &mut PeerData) -> ngx_int_t {
    // SAFETY: main conf of the cycle this request belongs to.
    let main = unsafe { &*pd.main };
    let agent = &main.agents[pd.agent];
    let Some(up) = agent.upstreams.iter().find(|u| u.index == pd.upstream) else {
        // SAFETY: fall back to plain round robin.
        return unsafe { ngx_http_upstream_get_round_robin_peer(pc, (&raw mut pd.rrp).cast()) };
    };
    let Some(view) = main.view() else {
        // SAFETY: as above.
        return unsafe { ngx_http_upstream_get_round_robin_peer(pc, (&raw mut pd.rrp).cast()) };
    };
    // SAFETY: primary is the live primary peer list of this upstream.
    unsafe { sync_weights(agent, up, &view, pd.primary) };

    let rc = match pd.choose {
        // SAFETY: pc and rrp are live.
        ChooseArg::P2c => unsafe { get_p2c_peer(pc, pd, up, &view) },
        ChooseArg::Wrr => NGX_BUSY as ngx_int_t,
    };
    let rc = if rc == NGX_OK as ngx_int_t {
        rc
    } else {
        // SAFETY: pc and rrp are live.
        unsafe { ngx_http_upstream_get_round_robin_peer(pc, (&raw mut pd.rrp).cast()) }
    };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    // SAFETY: after a successful get, rrp.current is the chosen peer.
    unsafe {
        let current = pd.rrp.current;
        pd.peer_name = (*current).name;
        pd.slot = usize::MAX;
        if pd.rrp.peers == pd.primary {
            let _lock = PeersLock::read(pd.primary);
            if let Some(i) = peers_iter(pd.primary).position(|p| p == current) {
                if i < up.peers.len() {
                    pd.slot = up.slot_base + i;
                }
            }
        }
        if pd.slot != usize::MAX {
            view.peer(pd.slot)
                .inflight
                .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            pd.started_ms = ngx_current_msec as u64;
        }
    }
    rc
}

/// Power of two choices among the eligible primary peers; `NGX_BUSY` when
/// none is eligible (the caller then lets round robin try the backups).
unsafe fn get_p2c_peer(
    pc: *mut ngx_peer_connection_t,
    pd: &mut PeerData,
    up: &UpstreamConf,
    view: &ZoneView,
) -> ngx_int_t {
    if pd.rrp.peers != pd.primary {
        return NGX_BUSY as ngx_int_t;
    }
    // SAFETY: pc is live; as in nginx's round robin, a new try starts
    // without a cached connection (keepalive, if any, sets one after us).
    unsafe {
        (*pc).set_cached(0);
        (*pc).connection = ptr::null_mut();
    }
    let peers = pd.primary;
    let mut loads = [PeerLoad::default(); MAX_PEERS];
    let mut ptrs = [ptr::null_mut::<ngx_http_upstream_rr_peer_t>(); MAX_PEERS];
    let bits = 8 * core::mem::size_of::<usize>();
    let now = ngx::ffi::ngx_time();
    // SAFETY: the write lock is held while peers are inspected and the chosen
    // one is charged, as in nginx's round robin.
    unsafe {
        let _lock = PeersLock::write(peers);
        let mut n = 0;
        for (i, p) in peers_iter(peers).enumerate().take(MAX_PEERS) {
            n = i + 1;
            ptrs[i] = p;
            let tried = *pd.rrp.tried.add(i / bits) & (1usize << (i % bits)) != 0;
            let peer = &*p;
            let failed = peer.max_fails != 0
                && peer.fails >= peer.max_fails
                && now - peer.checked <= peer.fail_timeout;
            let full = peer.max_conns != 0 && peer.conns >= peer.max_conns;
            let eligible = !tried && peer.down == 0 && !failed && !full && i < up.peers.len();
            let slot = if i < up.peers.len() {
                Some(view.peer(up.slot_base + i))
            } else {
                None
            };
            loads[i] = PeerLoad {
                weight: u32::try_from(peer.weight).unwrap_or(1).max(1),
                inflight: slot.map_or(0, |s| {
                    let others: u64 = up
                        .siblings
                        .get(i)
                        .map_or(0, |v| v.iter().map(|&j| view.peer(j).inflight()).sum());
                    s.inflight() + others
                }),
                latency_ewma_ms: slot.map_or(0.0, |s| s.latency_ewma_ms()),
                eligible,
            };
        }
        let Some(best) = crate::agent::with_rng(|rng| p2c(&loads[..n], rng)) else {
            return NGX_BUSY as ngx_int_t;
        };
        let peer = &mut *ptrs[best];
        pd.rrp.current = peer;
        #[cfg(ngx_peer_refs)]
        {
            peer.refs += 1;
        }
        *pd.rrp.tried.add(best / bits) |= 1usize << (best % bits);
        if now - peer.checked > peer.fail_timeout {
            peer.checked = now;
        }
        (*pc).sockaddr = peer.sockaddr;
        (*pc).socklen = peer.socklen;
        (*pc).name = &mut peer.name;
        peer.conns += 1;
    }
    NGX_OK as ngx_int_t
}

unsafe extern "C" fn free_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
    state: ngx_uint_t,
) {
    no_unwind((), || {
        // SAFETY: data is our PeerData; pc is live.
        unsafe { free_peer_inner(pc, &mut *(data as *mut PeerData), state) }
    })
}

unsafe fn free_peer_inner(pc: *mut ngx_peer_connection_t, pd: &mut PeerData, state: ngx_uint_t) {
    if pd.slot != usize::MAX {
        // SAFETY: main conf and request are live for the request's lifetime.
        unsafe {
            let main = &*pd.main;
            if let Some(view) = main.view() {
                let slot = view.peer(pd.slot);
                let u = (*pd.request).upstream;
                let st = if u.is_null() {
                    ptr::null_mut()
                } else {
                    (*u).state
                };
                let elapsed = (ngx_current_msec as u64).saturating_sub(pd.started_ms);
                let mut outcome = TryOutcome {
                    status_class: None,
                    failed: state & NGX_PEER_FAILED as ngx_uint_t != 0,
                    response_msec: elapsed,
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
                    outcome.in_bytes = u64::try_from(st.bytes_received).unwrap_or(0);
                    outcome.out_bytes = u64::try_from(st.bytes_sent).unwrap_or(0);
                }
                slot.record(&outcome, ngx_current_msec as u64);
                slot.inflight
                    .fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
            }
        }
        pd.slot = usize::MAX;
    }
    // SAFETY: hand over to nginx's round robin with its own data.
    unsafe { ngx_http_upstream_free_round_robin_peer(pc, (&raw mut pd.rrp).cast(), state) };
}
