//! `ngx_http_deep_sched_module`: nginx upstream balancing by a learned policy.
//!
//! This crate is the nginx glue only, one file per nginx concept, each
//! depending only on those above it:
//! - [`config`]: the configuration structs and their accessors;
//! - [`zone`]: the shared memory with per-peer counters and decisions, and
//!   its set-up;
//! - [`upstream`]: the balancer life cycle (`init_upstream` → `init_peer` →
//!   `get_peer` / `free_peer`), wrapping nginx's round robin;
//! - [`directive`]: `deep_sched` and the post-configuration zone layout;
//! - [`agent`]: the per-interval decision timer and the sample log;
//! - [`check`]: `deep_sched_check`, the active health checks;
//! - [`status`]: the `deep_sched_status` handler;
//! - [`api`]: the runtime API of `deep_sched_status write=on`;
//! - [`variables`]: `$deep_sched_state`, `$deep_sched_peer`.
//!
//! Everything that can be decided without nginx (policy format, features,
//! GMM scoring, decisions, peer choice, directive syntax) lives in
//! `deep_sched_core`.

#![allow(clippy::missing_safety_doc)]

use core::cell::RefCell;
use core::ffi::c_void;
use core::ptr;

use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_http_module_t, ngx_int_t, ngx_module_t, ngx_uint_t,
    NGX_CONF_ANY, NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET,
    NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF_OFFSET, NGX_HTTP_UPS_CONF,
};
use ngx::ngx_string;
use rand::rngs::SmallRng;
use rand::SeedableRng;

pub mod agent;
pub mod api;
pub mod check;
pub mod config;
pub mod directive;
pub mod status;
pub mod upstream;
pub mod variables;
pub mod zone;

/// Runs `f`, turning a panic into `fallback`: a panic must never unwind into
/// nginx's C frames (that would abort the worker, an outage).
pub(crate) fn no_unwind<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(fallback)
}

thread_local! {
    /// The process's random source (explore draws, epsilon, p2c, slow
    /// start): seeded per process, never shared, so no lock.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_entropy());
}

/// Runs `f` with the process's random number generator.
pub(crate) fn with_rng<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

static NGX_HTTP_DEEP_SCHED_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(variables::preconfiguration),
    postconfiguration: Some(directive::postconfiguration),
    create_main_conf: Some(config::create_main_conf),
    init_main_conf: None,
    create_srv_conf: Some(config::create_srv_conf),
    merge_srv_conf: None,
    create_loc_conf: None,
    merge_loc_conf: None,
};

static mut NGX_HTTP_DEEP_SCHED_COMMANDS: [ngx_command_t; 4] = [
    ngx_command_t {
        name: ngx_string!("deep_sched"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_ANY) as ngx_uint_t,
        set: Some(directive::deep_sched),
        conf: NGX_HTTP_SRV_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("deep_sched_check"),
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_ANY) as ngx_uint_t,
        set: Some(check::deep_sched_check),
        conf: NGX_HTTP_SRV_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("deep_sched_status"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(status::deep_sched_status),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

#[cfg(feature = "export-modules")]
ngx::ngx_modules!(ngx_http_deep_sched_module);

/// The module, as nginx's `load_module` finds it.
#[used]
#[allow(non_upper_case_globals)]
#[cfg_attr(not(feature = "export-modules"), no_mangle)]
pub static mut ngx_http_deep_sched_module: ngx_module_t = ngx_module_t {
    ctx: &raw const NGX_HTTP_DEEP_SCHED_MODULE_CTX as *mut c_void,
    // SAFETY: taking the address of a static; nginx only reads the table.
    commands: unsafe { &raw mut NGX_HTTP_DEEP_SCHED_COMMANDS[0] },
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    init_process: Some(init_process),
    ..ngx_module_t::default()
};

/// The module descriptor, for configuration look-ups.
pub(crate) fn module() -> &'static ngx_module_t {
    // SAFETY: nginx writes the module's indices before any callback runs and
    // never afterwards; reading through a shared reference is then sound.
    unsafe { &*ptr::addr_of!(ngx_http_deep_sched_module) }
}

/// Starts the decision timers — in worker processes and in single-process
/// mode only: the cache manager and loader run every module's
/// `init_process` too, and must not decide or write the sample log.
extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    no_unwind(ngx::ffi::NGX_OK as ngx_int_t, || {
        // SAFETY: ngx_process is set before init_process runs.
        let role = unsafe { ngx::ffi::ngx_process } as u32;
        if role == ngx::ffi::NGX_PROCESS_WORKER || role == ngx::ffi::NGX_PROCESS_SINGLE {
            // SAFETY: nginx calls init_process with the live cycle, its event
            // loop initialised.
            unsafe { agent::start_timers(cycle) };
        }
        ngx::ffi::NGX_OK as ngx_int_t
    })
}

/// Helper for handlers that only have `cf`.
pub(crate) unsafe fn conf_args<'a>(cf: *mut ngx_conf_t) -> &'a [ngx::ffi::ngx_str_t] {
    // SAFETY: during directive handling `cf->args` is an array of ngx_str_t.
    unsafe { (*(*cf).args).as_slice() }
}
