//! Configuration: the `deep_sched` directive, the module's main and
//! upstream configuration, and the shared zone they size.
//!
//! Life cycle (as in nginx's own balancers):
//! `deep_sched` (directive) → [`crate::upstream::init_upstream`] (peers are
//! known) → [`postconfiguration`] (all upstreams known: size and add the
//! zone) → [`init_zone`] (shared memory mapped) → `init_process` (timers).

use core::cell::Cell;
use core::ffi::{c_char, c_void};
use core::ptr;
use std::sync::Arc;

use deep_sched_core::decision::{Decider, Mode};
use deep_sched_core::directive::{self as args, ChooseArg, DirectiveArgs, ModeArg};
use deep_sched_core::policy::Policy;
use ngx::core::Pool;
use ngx::ffi::{
    ngx_conf_full_name, ngx_conf_open_file, ngx_conf_t, ngx_event_t, ngx_http_conf_ctx_t,
    ngx_http_upstream_module, ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_open_file_t,
    ngx_shared_memory_add, ngx_shm_zone_t, ngx_slab_alloc, ngx_slab_pool_t, ngx_str_t, ngx_uint_t,
    NGX_HTTP_UPSTREAM_BACKUP, NGX_HTTP_UPSTREAM_CREATE, NGX_HTTP_UPSTREAM_DOWN,
    NGX_HTTP_UPSTREAM_FAIL_TIMEOUT, NGX_HTTP_UPSTREAM_MAX_CONNS, NGX_HTTP_UPSTREAM_MAX_FAILS,
    NGX_HTTP_UPSTREAM_WEIGHT, NGX_LOG_EMERG,
};
use ngx::ngx_conf_log_error;

use crate::zone::{self, ZoneView};
use crate::{conf_args, module, no_unwind};

/// Most primary peers one upstream may have under `deep_sched` (the per
/// request paths use fixed stack arrays of this size).
pub const MAX_PEERS: usize = 64;

/// One upstream block of an agent.
pub struct UpstreamConf {
    /// The upstream's name as written in `upstream NAME {`.
    pub name: String,
    /// Primary peers in configuration order (filled by `init_upstream`).
    pub peers: Vec<String>,
    /// Their configured `weight=`.
    pub configured_weights: Vec<u32>,
    /// Index of the first peer in the zone's peer slots.
    pub slot_base: usize,
    /// Per peer, the zone slots of the same address in other upstreams (any
    /// agent): `choose=p2c` counts their requests in flight too.
    pub siblings: Vec<Vec<usize>>,
    /// Index of this upstream in the agent (and in its policy).
    pub index: usize,
    /// Worker-local: the decision epoch whose weights this worker applied.
    pub applied_epoch: Cell<u64>,
    /// Set once `init_upstream` ran for this upstream.
    pub initialised: bool,
}

/// A set of upstreams deciding together.
pub struct AgentConf {
    /// Policy path, log path or upstream name (see docs/DESIGN.md).
    pub key: String,
    /// The directive as parsed (from the first upstream naming the agent).
    pub args: DirectiveArgs,
    /// The loaded, validated policy (policy mode only).
    pub policy: Option<Arc<Policy>>,
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
    /// Worker-local decider (created in `init_process`).
    pub decider: Option<Decider>,
    /// Worker-local decision timer.
    pub timer: Option<Box<ngx_event_t>>,
}

impl AgentConf {
    /// The decision mode for the core's decider.
    pub fn mode(&self) -> Mode {
        match (&self.args.mode, &self.policy) {
            (ModeArg::Policy(_), Some(p)) => Mode::Policy {
                policy: Arc::clone(p),
                epsilon: self.args.epsilon,
            },
            (ModeArg::Explore, _) => Mode::Explore {
                weights: self.args.weights.clone(),
            },
            _ => Mode::Observe,
        }
    }

    /// Total number of peers of the agent.
    pub fn peer_count(&self) -> usize {
        self.upstreams.iter().map(|u| u.peers.len()).sum()
    }
}

/// The module's `http`-level configuration.
pub struct MainConf {
    pub agents: Vec<AgentConf>,
    /// The shared zone (null when no upstream uses `deep_sched`).
    pub zone: *mut ngx_shm_zone_t,
    /// Mapped zone block (set by `init_zone`).
    pub view: Option<ZoneView>,
    /// Total peer slots.
    pub total_peers: usize,
}

impl MainConf {
    /// The zone view, once the zone is mapped.
    pub fn view(&self) -> Option<ZoneView> {
        self.view
    }
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
    pub main: *mut MainConf,
    /// Per-request peer choice.
    pub choose: ChooseArg,
}

pub unsafe extern "C" fn create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    no_unwind(ptr::null_mut(), || {
        // SAFETY: cf is the live configuration; the pool outlives the cycle
        // and `allocate` registers a cleanup that drops the value.
        let pool = unsafe { Pool::from_ngx_pool((*cf).pool) };
        pool.allocate(MainConf {
            agents: Vec::new(),
            zone: ptr::null_mut(),
            view: None,
            total_peers: 0,
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
            main: ptr::null_mut(),
            choose: ChooseArg::Wrr,
        })
        .cast()
    })
}

/// Reports a configuration error in nginx's format and fails the directive.
pub(crate) fn conf_error(cf: *mut ngx_conf_t, msg: &str) -> *mut c_char {
    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", msg);
    ngx::core::NGX_CONF_ERROR
}

fn ngx_str_to_string(s: &ngx_str_t) -> String {
    String::from_utf8_lossy(s.as_bytes()).into_owned()
}

/// Copies `s` into the configuration pool as an `ngx_str_t` whose data is
/// also NUL-terminated (nginx passes file names to open(2) as C strings).
unsafe fn pool_str(cf: *mut ngx_conf_t, s: &str) -> Option<ngx_str_t> {
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

/// Resolves `name` like nginx does for files named in the configuration
/// (`conf_prefix`: relative to the configuration directory, else to the
/// prefix). Returns the full path.
unsafe fn full_name(cf: *mut ngx_conf_t, name: &str, conf_prefix: bool) -> Option<String> {
    // SAFETY: cf is live; ngx_conf_full_name may keep pointing at the copy.
    unsafe {
        let mut s = pool_str(cf, name)?;
        if ngx_conf_full_name((*cf).cycle, &mut s, ngx_uint_t::from(conf_prefix))
            != ngx::ffi::NGX_OK as ngx_int_t
        {
            return None;
        }
        Some(ngx_str_to_string(&s))
    }
}

/// `deep_sched [explore | POLICY_FILE] [interval=] [choose=] [log=] [weights=] [epsilon=];`
pub unsafe extern "C" fn deep_sched(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx::ffi::ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    no_unwind(ngx::core::NGX_CONF_ERROR, || {
        // SAFETY: nginx calls directive handlers with a live cf and this
        // module's srv conf for the enclosing upstream block.
        unsafe { deep_sched_inner(cf, &mut *(conf as *mut SrvConf)) }
    })
}

unsafe fn deep_sched_inner(cf: *mut ngx_conf_t, scf: &mut SrvConf) -> *mut c_char {
    if scf.agent != usize::MAX {
        return conf_error(cf, "\"deep_sched\" directive is duplicate");
    }
    // SAFETY: cf->args holds the directive's words.
    let words: Vec<String> = unsafe { conf_args(cf) }
        .iter()
        .skip(1)
        .map(ngx_str_to_string)
        .collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    let parsed = match args::parse(&refs) {
        Ok(a) => a,
        Err(e) => return conf_error(cf, &e.to_string()),
    };

    // SAFETY: inside an upstream block cf->ctx is an http conf ctx whose
    // srv_conf array holds the upstream module's conf.
    let uscf = unsafe {
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        *(*ctx).srv_conf.add(ngx_http_upstream_module.ctx_index)
            as *mut ngx_http_upstream_srv_conf_t
    };
    // SAFETY: uscf is the live upstream conf.
    let uscf = unsafe { &mut *uscf };
    if uscf.peer.init_upstream.is_some() {
        return conf_error(
            cf,
            "\"deep_sched\" must come before \"keepalive\" and cannot be combined with \
             another load balancing method in the same upstream",
        );
    }

    // SAFETY: the main conf of this module for the current http block.
    let main = unsafe {
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        &mut *(*(*ctx).main_conf.add(module().ctx_index) as *mut MainConf)
    };
    let upstream_name = ngx_str_to_string(&uscf.host);

    // Resolve files and load the policy now, so `nginx -t` reports problems.
    let mut policy = None;
    let mut policy_path = None;
    if let ModeArg::Policy(file) = &parsed.mode {
        // SAFETY: cf is live.
        let Some(path) = (unsafe { full_name(cf, file, true) }) else {
            return conf_error(cf, &format!("cannot resolve policy file \"{file}\""));
        };
        policy_path = Some(path);
    }
    let log_path = match &parsed.log {
        // SAFETY: cf is live.
        Some(l) => match unsafe { full_name(cf, l, false) } {
            Some(p) => Some(p),
            None => return conf_error(cf, &format!("cannot resolve log file \"{l}\"")),
        },
        None => None,
    };
    let key = policy_path
        .clone()
        .or_else(|| log_path.clone())
        .unwrap_or_else(|| format!("upstream:{upstream_name}"));

    let agent_index = match main.agents.iter().position(|a| a.key == key) {
        Some(i) => {
            let a = &main.agents[i];
            if a.args != parsed {
                return conf_error(
                    cf,
                    &format!(
                        "\"deep_sched\" in upstream \"{upstream_name}\" joins the agent \"{key}\" \
                         but its parameters differ from the first upstream \"{}\"",
                        a.upstreams[0].name
                    ),
                );
            }
            i
        }
        None => {
            if let Some(path) = &policy_path {
                match Policy::load(path) {
                    Ok(p) => policy = Some(Arc::new(p)),
                    Err(e) => return conf_error(cf, &e.to_string()),
                }
            }
            let interval_ms = parsed
                .interval_ms
                .or_else(|| policy.as_ref().map(|p: &Arc<Policy>| p.interval_ms()))
                .unwrap_or(args::DEFAULT_INTERVAL_MS);
            let log = match (&parsed.log, &log_path) {
                // ngx_conf_open_file resolves the name against the prefix
                // itself: hand it the name as written.
                (Some(p), Some(_)) => {
                    // SAFETY: cf->cycle is live; nginx opens the file in the
                    // master (so workers can write it whatever their user)
                    // and reopens it on USR1 like access logs.
                    let f = unsafe { open_log(cf, p) };
                    if f.is_null() {
                        return conf_error(cf, &format!("cannot open log file \"{p}\""));
                    }
                    f
                }
                _ => ptr::null_mut(),
            };
            main.agents.push(AgentConf {
                key: key.clone(),
                args: parsed.clone(),
                policy: policy.clone(),
                policy_path: policy_path.clone(),
                interval_ms,
                upstreams: Vec::new(),
                log,
                index: main.agents.len(),
                decider: None,
                timer: None,
            });
            main.agents.len() - 1
        }
    };

    let agent = &mut main.agents[agent_index];
    if agent.upstreams.iter().any(|u| u.name == upstream_name) {
        return conf_error(
            cf,
            &format!("upstream \"{upstream_name}\" is already part of agent \"{key}\""),
        );
    }
    let index = match &agent.policy {
        Some(p) => match p
            .shape()
            .upstreams
            .iter()
            .position(|u| u.name == upstream_name)
        {
            Some(i) => i,
            None => {
                return conf_error(
                    cf,
                    &format!(
                        "policy \"{key}\" has no upstream \"{upstream_name}\" (it lists: {})",
                        p.shape()
                            .upstreams
                            .iter()
                            .map(|u| u.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            }
        },
        None => agent.upstreams.len(),
    };
    agent.upstreams.push(UpstreamConf {
        name: upstream_name,
        peers: Vec::new(),
        configured_weights: Vec::new(),
        slot_base: 0,
        siblings: Vec::new(),
        index,
        applied_epoch: Cell::new(0),
        initialised: false,
    });
    agent.upstreams.sort_by_key(|u| u.index);
    scf.agent = agent_index;
    scf.upstream = index;
    scf.main = main;
    scf.choose = parsed.choose;

    uscf.peer.init_upstream = Some(crate::upstream::init_upstream);
    uscf.flags = (NGX_HTTP_UPSTREAM_CREATE
        | NGX_HTTP_UPSTREAM_WEIGHT
        | NGX_HTTP_UPSTREAM_MAX_CONNS
        | NGX_HTTP_UPSTREAM_MAX_FAILS
        | NGX_HTTP_UPSTREAM_FAIL_TIMEOUT
        | NGX_HTTP_UPSTREAM_DOWN
        | NGX_HTTP_UPSTREAM_BACKUP) as ngx_uint_t;
    ngx::core::NGX_CONF_OK
}

unsafe fn open_log(cf: *mut ngx_conf_t, path: &str) -> *mut ngx_open_file_t {
    // SAFETY: the name lives in the configuration pool, as long as the open
    // file entry; it is NUL-terminated for open(2).
    unsafe {
        match pool_str(cf, path) {
            Some(mut name) => ngx_conf_open_file((*cf).cycle, &mut name),
            None => ptr::null_mut(),
        }
    }
}

/// After all upstreams were initialised: check agents are complete, lay out
/// the zone and add it.
pub unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    no_unwind(ngx::ffi::NGX_ERROR as ngx_int_t, || {
        // SAFETY: cf is live; the main conf was created by create_main_conf.
        unsafe { postconfiguration_inner(cf) }
    })
}

unsafe fn postconfiguration_inner(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: main conf of this module in the http block being finished.
    let main = unsafe {
        let ctx = (*cf).ctx as *mut ngx_http_conf_ctx_t;
        &mut *(*(*ctx).main_conf.add(module().ctx_index) as *mut MainConf)
    };
    if main.agents.is_empty() {
        return ngx::ffi::NGX_OK as ngx_int_t;
    }
    let mut slot = 0usize;
    // The slot sizes are part of the layout: a build whose zone records
    // differ never adopts an old zone.
    let mut layout = format!(
        "{}/{};",
        core::mem::size_of::<zone::AgentSlot>(),
        core::mem::size_of::<zone::PeerSlot>()
    );
    for agent in &mut main.agents {
        if let Some(p) = &agent.policy {
            let want = p.shape().upstreams.len();
            if agent.upstreams.len() != want {
                let missing: Vec<&str> = p
                    .shape()
                    .upstreams
                    .iter()
                    .filter(|u| !agent.upstreams.iter().any(|a| a.name == u.name))
                    .map(|u| u.name.as_str())
                    .collect();
                ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "policy \"{}\" names upstreams that do not use it: {} (add \"deep_sched {}\" to them)",
                    agent.key,
                    missing.join(", "),
                    agent.key
                );
                return ngx::ffi::NGX_ERROR as ngx_int_t;
            }
        }
        layout.push_str(&agent.key);
        for up in &mut agent.upstreams {
            if !up.initialised {
                ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "upstream \"{}\": deep_sched was replaced by another load balancing method \
                     (least_conn, hash, ip_hash, random) declared after it; use one of them",
                    up.name
                );
                return ngx::ffi::NGX_ERROR as ngx_int_t;
            }
            up.slot_base = slot;
            slot += up.peers.len();
            layout.push('|');
            layout.push_str(&up.name);
            for p in &up.peers {
                layout.push(',');
                layout.push_str(p);
            }
        }
        layout.push(';');
    }
    main.total_peers = slot;
    let names: Vec<&str> = main
        .agents
        .iter()
        .flat_map(|a| {
            a.upstreams
                .iter()
                .flat_map(|u| u.peers.iter().map(String::as_str))
        })
        .collect();
    let mut siblings = deep_sched_core::choose::same_address_slots(&names).into_iter();
    for up in main.agents.iter_mut().flat_map(|a| a.upstreams.iter_mut()) {
        up.siblings = siblings.by_ref().take(up.peers.len()).collect();
    }

    let bytes = zone::block_size(main.agents.len(), main.total_peers);
    // Room for the slab allocator's own pages and rounding.
    let size = (bytes + 16 * 4096).next_multiple_of(4096);
    let name = format!("deep_sched_{:016x}", fnv1a(layout.as_bytes()));
    // SAFETY: the name is copied into the configuration pool, which lives as
    // long as the cycle that owns the zone.
    unsafe {
        let Some(mut zname) = pool_str(cf, &name) else {
            return ngx::ffi::NGX_ERROR as ngx_int_t;
        };
        let tag = ptr::addr_of!(crate::ngx_http_deep_sched_module) as *mut c_void;
        let zone = ngx_shared_memory_add(cf, &mut zname, size, tag);
        if zone.is_null() {
            return ngx::ffi::NGX_ERROR as ngx_int_t;
        }
        (*zone).init = Some(init_zone);
        (*zone).data = (main as *mut MainConf).cast();
        main.zone = zone;
    }
    ngx::ffi::NGX_OK as ngx_int_t
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
    no_unwind(ngx::ffi::NGX_ERROR as ngx_int_t, || {
        // SAFETY: nginx calls init with the mapped zone; shm.addr starts with
        // the slab pool nginx initialised; zone.data is our main conf.
        unsafe {
            let main = &mut *((*zone).data as *mut MainConf);
            let shpool = (*zone).shm.addr as *mut ngx_slab_pool_t;
            let mut block = (*shpool).data as *mut u8;
            let fresh = block.is_null();
            if fresh {
                let bytes = zone::block_size(main.agents.len(), main.total_peers);
                block = ngx_slab_alloc(shpool, bytes) as *mut u8;
                if block.is_null() {
                    return ngx::ffi::NGX_ERROR as ngx_int_t;
                }
                ptr::write_bytes(block, 0, bytes);
                (*shpool).data = block.cast();
            }
            let view = ZoneView::new(block, main.agents.len());
            if fresh {
                crate::agent::init_slots(main, &view);
            }
            main.view = Some(view);
            ngx::ffi::NGX_OK as ngx_int_t
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv_is_stable() {
        assert_eq!(super::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(super::fnv1a(b"a"), super::fnv1a(b"b"));
    }
}
