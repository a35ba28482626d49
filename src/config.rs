//! The module's configuration: what `deep_sched` builds at configuration
//! time (one [`MainConf`] per `http` block, one [`SrvConf`] per upstream)
//! and the accessors that find it again, with lifetimes tied to what owns
//! it (the cycle, the request, the configuration being parsed).
//!
//! Everything here is written while nginx reads the configuration (one
//! process, one thread) and only read afterwards, but for the worker-local
//! cells (`Cell`/`RefCell`): each worker has its own copy of the
//! configuration after `fork`.

use core::cell::{Cell, RefCell};
use core::ffi::{c_char, c_void};
use core::ptr;
use std::sync::Arc;

use deep_sched_core::check::CheckArgs;
use deep_sched_core::choose::PeerLoad;
use deep_sched_core::decision::{Decider, Mode};
use deep_sched_core::directive::{ChooseArg, DirectiveArgs, ModeArg};
use deep_sched_core::draw::DrawTable;
use deep_sched_core::hash::Ring;
use deep_sched_core::policy::LoadedPolicy;
use ngx::core::Pool;
use ngx::ffi::{
    ngx_conf_t, ngx_cycle_t, ngx_http_complex_value_t, ngx_http_conf_ctx_t, ngx_http_module,
    ngx_http_request_t, ngx_http_upstream_module, ngx_http_upstream_rr_peer_t,
    ngx_http_upstream_srv_conf_t, ngx_open_file_t, ngx_shm_zone_t, ngx_str_t, NGX_LOG_EMERG,
};
use ngx::ngx_conf_log_error;
use rustc_hash::FxHashMap;

use crate::{module, no_unwind};

/// One upstream block of an agent.
pub struct UpstreamConf {
    /// The upstream's name as written in `upstream NAME {`.
    pub name: String,
    /// Primary peers in configuration order (filled by `init_upstream`).
    pub peers: Vec<String>,
    /// Their configured `weight=`.
    pub configured_weights: Vec<u32>,
    /// Their `max_fails=` (a run of this many failed tries, at least one,
    /// followed by a success starts the peer's slow start).
    pub max_fails: Vec<u32>,
    /// Index of the first peer in the zone's peer slots.
    pub slot_base: usize,
    /// Index of this upstream in the agent (and in its policy).
    pub index: usize,
    /// Their `down` flag as configured (the runtime API's drain and down
    /// come on top and go away again).
    pub configured_down: Vec<bool>,
    /// The upstream has a `zone` (peers shared by all workers).
    pub has_zone: bool,
    /// Worker-local: the decision epoch whose weights this worker applied.
    pub applied_epoch: Cell<u64>,
    /// Worker-local: the agent's runtime API epoch this worker applied.
    pub applied_admin: Cell<u64>,
    /// Set once `init_upstream` ran for this upstream.
    pub initialised: bool,
    /// Worker-local: what the request path reuses (built on a worker's
    /// first request of the cycle, then once per decision).
    pub local: RefCell<UpstreamLocal>,
    /// `deep_sched_check` of the upstream (filled by `init_upstream`).
    pub check: Option<UpstreamCheck>,
}

/// An upstream's active health checks: the directive and what each check
/// connects to.
pub struct UpstreamCheck {
    /// The parsed `deep_sched_check`.
    pub args: CheckArgs,
    /// The HTTP request of a check (empty for `type=tcp`).
    pub request: Vec<u8>,
    /// Per primary peer: the address checked (the peer's, with `port=`
    /// applied), as `sockaddr` bytes.
    pub addrs: Vec<Box<[u8]>>,
    /// With `tls`: the client TLS context (made at configuration time,
    /// freed with the configuration pool); null without.
    pub ssl: *mut ngx::ffi::ngx_ssl_t,
    /// With `tls`: per primary peer, the SNI name (the host of its
    /// `server` line when that is a name, not an address).
    pub sni: Vec<Option<std::ffi::CString>>,
}

/// Worker-local state of an upstream, so a request allocates nothing and
/// finds things in O(1).
#[derive(Default)]
pub struct UpstreamLocal {
    /// The primary peers by index, as this worker sees the list (with a
    /// `zone`, nginx's copy in shared memory; the links never change at run
    /// time).
    pub peers: Vec<*mut ngx_http_upstream_rr_peer_t>,
    /// Peer address → index: which slot round robin's pick is, in O(1).
    /// (`FxHashMap`: the keys are pointers, no attacker chooses them.)
    pub index: FxHashMap<usize, usize>,
    /// The weights in force as an alias table for `choose=p2c` (rebuilt
    /// when a decision is applied).
    pub draw: Option<DrawTable>,
    /// Scratch: the weights read from the zone.
    pub weights: Vec<u32>,
    /// Scratch: the loads of the fallback scan of `choose=p2c`.
    pub loads: Vec<PeerLoad>,
    /// Scratch: peers held back for slow start during one pick.
    pub masked: Vec<usize>,
    /// `choose=hash`: the ring of the weights in force (rebuilt in place
    /// when a decision is applied).
    pub ring: Option<Ring>,
}

/// A set of upstreams deciding together.
pub struct AgentConf {
    /// Policy path, log path or upstream name (see docs/DESIGN.md).
    pub key: String,
    /// The directive as parsed (from the first upstream naming the agent).
    pub args: DirectiveArgs,
    /// The loaded, validated policy of either kind (policy mode only).
    pub policy: Option<Arc<LoadedPolicy>>,
    /// Resolved policy path (for status and logs).
    pub policy_path: Option<String>,
    /// Decision interval.
    pub interval_ms: u64,
    /// The agent's upstreams, in policy order when there is a policy.
    pub upstreams: Vec<UpstreamConf>,
    /// Sample log opened by nginx (inherited by workers, reopened on USR1).
    pub log: *mut ngx_open_file_t,
    /// Index of this agent's slot in the zone.
    pub index: usize,
    /// Worker-local decider (created when the worker starts its timers).
    pub decider: RefCell<Option<Decider>>,
}

impl AgentConf {
    /// The decision mode for the core's decider.
    pub fn mode(&self) -> Mode {
        match (&self.args.mode, &self.policy) {
            (ModeArg::Policy(_), Some(p)) => p.mode(self.args.epsilon),
            (ModeArg::Explore, _) => match self.args.spread {
                Some(spread) => Mode::Perturb { spread },
                None => Mode::Explore {
                    weights: self.args.weights.clone(),
                },
            },
            _ => Mode::Observe,
        }
    }

    /// A decider for this agent (each worker builds its own).
    pub fn decider_template(&self) -> Decider {
        let configured: Vec<Vec<u32>> = self
            .upstreams
            .iter()
            .map(|u| u.configured_weights.clone())
            .collect();
        let names: Vec<(String, Vec<String>)> = self
            .upstreams
            .iter()
            .map(|u| (u.name.clone(), u.peers.clone()))
            .collect();
        Decider::new(self.mode(), &self.key, names, configured)
            .with_choose(self.args.choose.name())
            .with_spread(self.args.spread)
    }

    /// The upstream with policy index `index`.
    pub fn upstream(&self, index: usize) -> Option<&UpstreamConf> {
        self.upstreams.iter().find(|u| u.index == index)
    }
}

/// The module's `http`-level configuration.
pub struct MainConf {
    /// The cycle this configuration belongs to (timers follow it).
    pub cycle: *mut ngx_cycle_t,
    pub agents: Vec<AgentConf>,
    /// The shared zone (null when no upstream uses `deep_sched`).
    pub zone: *mut ngx_shm_zone_t,
    /// The module's block in the zone, once mapped (null before, and again
    /// once a reload in this same process replaced the zone: nginx unmaps
    /// it while this configuration may still serve requests).
    pub block: Cell<*mut u8>,
    /// Total peer slots.
    pub total_peers: usize,
    /// Per peer slot, the slot counting the requests in flight at its
    /// address when several slots name it (`choose=p2c` compares those).
    pub shared_address: Vec<Option<usize>>,
    /// Worker-local: the in-flight shard this process claimed in the zone.
    pub shard: Cell<Option<usize>>,
    /// Counter shards in the zone (two per worker process, for a reload's
    /// old and new generation, plus two).
    pub counter_shards: usize,
    /// Worker-local: the counter shard this process claimed in the zone.
    pub counter_shard: Cell<Option<usize>>,
    /// Worker-local: the decision timers of this cycle were started.
    pub timers_started: Cell<bool>,
    /// Every `deep_sched_check` with its upstream's name, to refuse one in
    /// an upstream without `deep_sched` once all are parsed.
    pub check_directives: Vec<(String, *const SrvConf)>,
}

/// The module's per-upstream configuration: which agent and upstream.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct SrvConf {
    /// Agent index, or `usize::MAX` when `deep_sched` is not used here.
    pub agent: usize,
    /// Upstream index within the agent.
    pub upstream: usize,
    /// The module's main configuration of this cycle.
    pub main: *const MainConf,
    /// Per-request peer choice.
    pub choose: ChooseArg,
    /// `choose=hash`: the compiled `key=` (null otherwise).
    pub key: *mut ngx_http_complex_value_t,
    /// `deep_sched_check` of the upstream (null: none), in the
    /// configuration pool.
    pub check: *const CheckArgs,
}

pub unsafe extern "C" fn create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    no_unwind(ptr::null_mut(), || {
        // SAFETY: cf is the live configuration; the pool outlives the cycle
        // and `allocate` registers a cleanup that drops the value.
        let pool = unsafe { Pool::from_ngx_pool((*cf).pool) };
        pool.allocate(MainConf {
            // SAFETY: cf is live.
            cycle: unsafe { (*cf).cycle },
            agents: Vec::new(),
            zone: ptr::null_mut(),
            block: Cell::new(ptr::null_mut()),
            total_peers: 0,
            shared_address: Vec::new(),
            shard: Cell::new(None),
            counter_shards: 0,
            counter_shard: Cell::new(None),
            timers_started: Cell::new(false),
            check_directives: Vec::new(),
        })
        .cast()
    })
}

pub unsafe extern "C" fn create_srv_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    no_unwind(ptr::null_mut(), || {
        // SAFETY: as in create_main_conf.
        let pool = unsafe { Pool::from_ngx_pool((*cf).pool) };
        pool.allocate(SrvConf {
            agent: usize::MAX,
            upstream: 0,
            main: ptr::null(),
            choose: ChooseArg::Wrr,
            key: ptr::null_mut(),
            check: ptr::null(),
        })
        .cast()
    })
}

/// The module's main configuration of `cycle` (`None` without an `http`
/// block). It lives as long as the cycle.
pub fn main_conf_of_cycle(cycle: &ngx_cycle_t) -> Option<&MainConf> {
    // SAFETY: conf_ctx[ngx_http_module.index] is the http conf ctx (or null
    // without an http block); its main_conf array holds ours, allocated in
    // the cycle's pool.
    unsafe {
        if cycle.conf_ctx.is_null() {
            // nginx's bootstrap cycle, before any configuration.
            return None;
        }
        let ctx = *cycle.conf_ctx.add(ngx_http_module.index) as *const ngx_http_conf_ctx_t;
        if ctx.is_null() {
            return None;
        }
        (*(*ctx).main_conf.add(module().ctx_index) as *const MainConf).as_ref()
    }
}

/// The module's main configuration for a request; it outlives the request.
pub fn main_conf_of_request(r: &ngx_http_request_t) -> Option<&MainConf> {
    // SAFETY: main_conf[ctx_index] is ours (created for every http block).
    unsafe { (*r.main_conf.add(module().ctx_index) as *const MainConf).as_ref() }
}

/// The module's main configuration of the `http` block being parsed.
///
/// # Safety
/// `cf` must be inside an `http` block (its ctx an http conf ctx), and no
/// other reference to the main configuration may be live.
pub unsafe fn main_conf_of_conf(cf: &mut ngx_conf_t) -> &mut MainConf {
    // SAFETY: as the caller promises; create_main_conf made the value.
    unsafe {
        let ctx = cf.ctx as *mut ngx_http_conf_ctx_t;
        &mut *(*(*ctx).main_conf.add(module().ctx_index) as *mut MainConf)
    }
}

/// The upstream module's configuration of the upstream block being parsed.
///
/// # Safety
/// `cf` must be inside an `upstream` block.
pub unsafe fn upstream_conf_of_conf(cf: &mut ngx_conf_t) -> &mut ngx_http_upstream_srv_conf_t {
    // SAFETY: inside an upstream block cf->ctx is an http conf ctx whose
    // srv_conf array holds the upstream module's conf.
    unsafe {
        let ctx = cf.ctx as *mut ngx_http_conf_ctx_t;
        &mut *(*(*ctx).srv_conf.add(ngx_http_upstream_module.ctx_index)
            as *mut ngx_http_upstream_srv_conf_t)
    }
}

/// This module's configuration of an upstream (`None` when the upstream
/// has no server configurations, as an implicit `proxy_pass` upstream).
pub fn srv_conf(us: &ngx_http_upstream_srv_conf_t) -> Option<&SrvConf> {
    // SAFETY: the srv_conf array has this module's conf at ctx_index
    // (created by create_srv_conf), allocated in the cycle's pool.
    unsafe {
        if us.srv_conf.is_null() {
            return None;
        }
        (*us.srv_conf.add(module().ctx_index) as *const SrvConf).as_ref()
    }
}

/// Reports a configuration error in nginx's format and fails the directive.
pub(crate) fn conf_error(cf: *mut ngx_conf_t, msg: &str) -> *mut c_char {
    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", msg);
    ngx::core::NGX_CONF_ERROR
}

/// An nginx string as an owned Rust string (lossy for non-UTF-8 bytes).
pub(crate) fn ngx_str_to_string(s: &ngx_str_t) -> String {
    String::from_utf8_lossy(s.as_bytes()).into_owned()
}

/// Copies `s` into the configuration pool as an `ngx_str_t` whose data is
/// also NUL-terminated (nginx passes file names to open(2) as C strings).
pub(crate) unsafe fn pool_str(cf: *mut ngx_conf_t, s: &str) -> Option<ngx_str_t> {
    // SAFETY: cf's pool is live for the cycle; the copy is s.len() + 1 bytes.
    unsafe {
        let pool = Pool::from_ngx_pool((*cf).pool);
        let data = pool.alloc_unaligned(s.len() + 1) as *mut u8;
        if data.is_null() {
            return None;
        }
        ptr::copy_nonoverlapping(s.as_ptr(), data, s.len());
        *data.add(s.len()) = 0;
        Some(ngx_str_t { len: s.len(), data })
    }
}
