//! The `deep_sched` directive and the post-configuration step that lays
//! out the shared zone.
//!
//! Life cycle (as in nginx's own balancers):
//! `deep_sched` (directive) → [`crate::upstream::init_upstream`] (peers are
//! known) → [`postconfiguration`] (all upstreams known: lay out and add the
//! zone) → `crate::zone` init (shared memory mapped) → `init_process`
//! (timers, in workers only).

use core::cell::Cell;
use core::ffi::{c_char, c_void};
use core::ptr;
use std::sync::Arc;

use deep_sched_core::directive::{self as args, ChooseArg, ModeArg};
use deep_sched_core::policy::LoadedPolicy;
use ngx::ffi::{
    ngx_conf_full_name, ngx_conf_open_file, ngx_conf_t, ngx_http_compile_complex_value,
    ngx_http_compile_complex_value_t, ngx_http_complex_value_t, ngx_int_t, ngx_open_file_t,
    ngx_uint_t, NGX_HTTP_UPSTREAM_BACKUP, NGX_HTTP_UPSTREAM_CREATE, NGX_HTTP_UPSTREAM_DOWN,
    NGX_HTTP_UPSTREAM_FAIL_TIMEOUT, NGX_HTTP_UPSTREAM_MAX_CONNS, NGX_HTTP_UPSTREAM_MAX_FAILS,
    NGX_HTTP_UPSTREAM_WEIGHT, NGX_LOG_EMERG, NGX_LOG_WARN,
};
use ngx::ngx_conf_log_error;

use crate::config::{
    conf_error, main_conf_of_conf, ngx_str_to_string, pool_str, upstream_conf_of_conf, AgentConf,
    SrvConf, UpstreamConf,
};
use crate::{conf_args, no_unwind, zone};

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

/// Compiles `key=` of `choose=hash` as an nginx complex value (as nginx's
/// `hash` compiles its key). Its variables are checked by name in
/// [`postconfiguration`], once every variable of the configuration is
/// defined.
unsafe fn compile_key(cf: *mut ngx_conf_t, key: &str) -> Option<*mut ngx_http_complex_value_t> {
    // SAFETY: cf is live; the value and the compiled script live in the
    // configuration pool, as long as the cycle.
    unsafe {
        let pool = ngx::core::Pool::from_ngx_pool((*cf).pool);
        let mut value = pool_str(cf, key)?;
        let cv = pool.calloc_type::<ngx_http_complex_value_t>();
        if cv.is_null() {
            return None;
        }
        let mut ccv: ngx_http_compile_complex_value_t = core::mem::zeroed();
        ccv.cf = cf;
        ccv.value = &mut value;
        ccv.complex_value = cv;
        (ngx_http_compile_complex_value(&mut ccv) == ngx::ffi::NGX_OK as ngx_int_t).then_some(cv)
    }
}

/// `deep_sched [explore | POLICY_FILE] [interval=] [choose=] [log=] [weights=] [epsilon=] [key=] [balance=];`
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

    // SAFETY: the directive is only allowed in upstream blocks.
    let uscf = unsafe { upstream_conf_of_conf(&mut *cf) };
    if uscf.peer.init_upstream.is_some() {
        return conf_error(
            cf,
            "\"deep_sched\" must come before \"keepalive\" and cannot be combined with \
             another load balancing method in the same upstream",
        );
    }

    // SAFETY: inside the http block; no other reference to it is live.
    let main = unsafe { main_conf_of_conf(&mut *cf) };
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
                match LoadedPolicy::load(path) {
                    Ok(p) => policy = Some(Arc::new(p)),
                    Err(e) => return conf_error(cf, &e.to_string()),
                }
            }
            if let Some(p) = &policy {
                if parsed.choose == ChooseArg::Wrr && p.learned_under().is_some_and(|c| c != "wrr")
                {
                    ngx_conf_log_error!(
                        NGX_LOG_WARN,
                        cf,
                        "deep_sched: policy \"{}\" was learned under choose={}, served here with \
                         choose=wrr: its weights were never tried without the per-request \
                         correction, and a smooth round robin keeps sending a peer its share \
                         when the table is wrong (drop \"choose=wrr\" to serve it as learned)",
                        key,
                        p.learned_under().unwrap_or_default()
                    );
                }
            }
            let interval_ms = parsed
                .interval_ms
                .or_else(|| policy.as_ref().map(|p: &Arc<LoadedPolicy>| p.interval_ms()))
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
                decider: Default::default(),
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
        max_fails: Vec::new(),
        configured_down: Vec::new(),
        has_zone: false,
        slot_base: 0,
        index,
        applied_epoch: Cell::new(0),
        applied_admin: Cell::new(0),
        initialised: false,
        local: Default::default(),
        check: None,
    });
    agent.upstreams.sort_by_key(|u| u.index);
    scf.agent = agent_index;
    scf.upstream = index;
    scf.main = main;
    scf.choose = parsed.choose;
    if let (ChooseArg::Hash, Some(key)) = (parsed.choose, &parsed.key) {
        // SAFETY: cf is live.
        match unsafe { compile_key(cf, key) } {
            Some(cv) => scf.key = cv,
            None => {
                return conf_error(
                    cf,
                    &format!(
                        "invalid parameter \"key={key}\" in \"deep_sched\": cannot compile the key"
                    ),
                )
            }
        }
    }

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

/// The error for `key=` when it names a variable the configuration does
/// not define (nginx's own check would fail too, later and without naming
/// the directive): `None` when every variable is known or there is no key.
/// Variables are matched as nginx does: by name, case-insensitively, or by
/// a prefix (`$http_`, `$cookie_`, `$arg_`, ...); `$1`.. are captures.
///
/// # Safety
/// `cf` must be the http block after it was parsed and before nginx's
/// `ngx_http_variables_init_vars` (which frees the names): postconfiguration.
unsafe fn unknown_key_variable(
    cf: *mut ngx_conf_t,
    args: &args::DirectiveArgs,
) -> Option<args::DirectiveError> {
    let key = args.key.as_deref()?;
    let names = args::key_variables(key).ok()?;
    // SAFETY: as the caller promises: the core module's main conf holds
    // every variable's name and the prefix variables.
    let (keys, prefixes) = unsafe {
        let ctx = (*cf).ctx as *mut ngx::ffi::ngx_http_conf_ctx_t;
        let cmcf = *(*ctx)
            .main_conf
            .add(ngx::ffi::ngx_http_core_module.ctx_index)
            as *const ngx::ffi::ngx_http_core_main_conf_t;
        if cmcf.is_null() || (*cmcf).variables_keys.is_null() {
            return None;
        }
        let keys = &(*(*cmcf).variables_keys).keys;
        let prefixes = &(*cmcf).prefix_variables;
        (
            core::slice::from_raw_parts(keys.elts as *const ngx::ffi::ngx_hash_key_t, keys.nelts),
            core::slice::from_raw_parts(
                prefixes.elts as *const ngx::ffi::ngx_http_variable_t,
                prefixes.nelts,
            ),
        )
    };
    let known = |name: &str| {
        let lower = name.to_ascii_lowercase();
        keys.iter()
            .any(|k| k.key.as_bytes().eq_ignore_ascii_case(lower.as_bytes()))
            || prefixes
                .iter()
                .any(|p| lower.as_bytes().starts_with(p.name.as_bytes()))
    };
    let unknown = names
        .into_iter()
        .find(|n| !n.bytes().all(|b| b.is_ascii_digit()) && !known(n))?;
    Some(args::DirectiveError {
        word: format!("key={key}"),
        problem: format!("unknown variable \"${unknown}\""),
    })
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
    // A reload in single-process mode: let the running cycle's timers hand
    // over to the new cycle's as soon as it is up (none exist elsewhere:
    // the master and `nginx -t` run no timers).
    // SAFETY: ngx_process is set before any configuration is read.
    if unsafe { ngx::ffi::ngx_process } as u32 == ngx::ffi::NGX_PROCESS_SINGLE {
        crate::agent::hurry_timers();
    }
    // SAFETY: postconfiguration runs in the http block being finished; no
    // other reference to the main conf is live.
    let main = unsafe { main_conf_of_conf(&mut *cf) };
    for (upstream, scf) in &main.check_directives {
        // SAFETY: the srv conf lives in the configuration pool.
        if unsafe { (**scf).agent } == usize::MAX {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "\"deep_sched_check\" in upstream \"{}\" needs \"deep_sched\" in the same upstream",
                upstream
            );
            return ngx::ffi::NGX_ERROR as ngx_int_t;
        }
    }
    if main.agents.is_empty() {
        return ngx::ffi::NGX_OK as ngx_int_t;
    }
    let mut slot = 0usize;
    // The slot sizes are part of the layout: a build whose zone records
    // differ never adopts an old zone.
    // SAFETY: cf->cycle is live; its core conf exists from the start of
    // the configuration (worker_processes is NGX_CONF_UNSET if it comes
    // after the http block).
    let workers = unsafe { zone::configured_workers((*cf).cycle) };
    main.counter_shards = zone::counter_shards_for(workers);
    let mut layout = format!(
        "{}/{}/{}/{};",
        core::mem::size_of::<zone::AgentSlot>(),
        core::mem::size_of::<zone::PeerSlot>(),
        zone::SHARDS,
        main.counter_shards
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
    for agent in &main.agents {
        // SAFETY: cf is the http block being finished.
        if let Some(e) = unsafe { unknown_key_variable(cf, &agent.args) } {
            let upstream = agent.upstreams.first().map_or("", |u| u.name.as_str());
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{} (upstream \"{}\")", e, upstream);
            return ngx::ffi::NGX_ERROR as ngx_int_t;
        }
    }
    let names: Vec<&str> = main
        .agents
        .iter()
        .flat_map(|a| {
            a.upstreams
                .iter()
                .flat_map(|u| u.peers.iter().map(String::as_str))
        })
        .collect();
    main.shared_address = deep_sched_core::choose::shared_addresses(&names);

    // SAFETY: cf is live; main lives in the configuration pool.
    if !unsafe { zone::add_zone(cf, main, &layout) } {
        return ngx::ffi::NGX_ERROR as ngx_int_t;
    }
    ngx::ffi::NGX_OK as ngx_int_t
}
