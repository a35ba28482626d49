//! Active health checks (`deep_sched_check`), on nginx's event loop.
//!
//! One timer per agent with checked upstreams runs in every worker (and in
//! single-process mode). Each tick it renews or tries to take the agent's
//! check lease in the zone ([`deep_sched_core::check::Lease`]: pid and
//! expiry); only the holder checks, so exactly one live process checks at a
//! time, and another takes over within a lease when it dies or exits (a
//! reload's old workers stop renewing as soon as they are told to quit).
//!
//! A check is a non-blocking connection made by `ngx_event_connect_peer`
//! with a fresh `ngx_peer_connection_t`: a TCP check passes once connected;
//! an HTTP check sends `GET uri HTTP/1.0` and judges the status line
//! (`deep_sched_core::check::parse_status_line`). One deadline timer
//! (`timeout=`) covers connect, send and read. Every path ends in
//! [`finish`], which closes the connection, records the result in the peer's
//! [`HealthCells`](deep_sched_core::slots::HealthCells) through the core's
//! state machine and logs a transition once (warn when the peer goes down,
//! with the reason; notice when it comes back). nginx's own connection
//! errors are kept out of the error log (the check's log has a level that
//! lets nothing below `emerg` through): a failing peer would otherwise log
//! every check.
//!
//! The checks need no pool: nothing is allocated per check but the boxed
//! [`Check`] (the request bytes and addresses are built at configuration
//! time). Timers and checks belong to their cycle, like the decision
//! timers (`crate::agent`): the cycle's pool cleanup closes the checks in
//! flight and deletes the timers.

use core::ffi::{c_char, c_void};
use core::ptr;
use core::sync::atomic::Ordering;

use deep_sched_core::check::{
    self as core_check, lease_ms, parse_status_line, tick_ms, CheckError, CheckType, Health,
    StatusLine, MAX_STATUS_LINE,
};
use deep_sched_core::samples::{SampleHealth, SampleRecord};
use deep_sched_core::status::PeerHealth;
use ngx::ffi::{
    ngx_add_timer, ngx_close_connection, ngx_conf_t, ngx_connection_t, ngx_current_msec, ngx_cycle,
    ngx_cycle_t, ngx_del_timer, ngx_event_connect_peer, ngx_event_get_peer, ngx_event_t,
    ngx_exiting, ngx_handle_read_event, ngx_handle_write_event, ngx_http_upstream_rr_peers_t,
    ngx_http_upstream_srv_conf_t, ngx_inet_set_port, ngx_int_t, ngx_log_t, ngx_msec_t,
    ngx_peer_connection_t, ngx_pid, ngx_pool_cleanup_add, ngx_quit, ngx_str_t, ngx_terminate,
    sockaddr, socklen_t, NGX_AGAIN, NGX_ERROR, NGX_LOG_EMERG, NGX_LOG_NOTICE, NGX_LOG_WARN, NGX_OK,
};
use ngx::{ngx_conf_log_error, ngx_log_error};

use crate::agent::wall_ms;
use crate::config::{
    conf_error, main_conf_of_conf, ngx_str_to_string, upstream_conf_of_conf, AgentConf, MainConf,
    SrvConf, UpstreamCheck, UpstreamConf,
};
use crate::zone::{process_alive, ZoneView};
use crate::{conf_args, no_unwind};

/// `deep_sched_check [type=] [uri=] [interval=] [timeout=] [fall=] [rise=] [status=...] [port=];`
pub unsafe extern "C" fn deep_sched_check(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx::ffi::ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    no_unwind(ngx::core::NGX_CONF_ERROR, || {
        // SAFETY: nginx calls directive handlers with a live cf and this
        // module's srv conf of the enclosing upstream block.
        unsafe { deep_sched_check_inner(cf, &mut *(conf as *mut SrvConf)) }
    })
}

unsafe fn deep_sched_check_inner(cf: *mut ngx_conf_t, scf: &mut SrvConf) -> *mut c_char {
    if !scf.check.is_null() {
        return conf_error(cf, "\"deep_sched_check\" directive is duplicate");
    }
    // SAFETY: cf->args holds the directive's words.
    let words: Vec<String> = unsafe { conf_args(cf) }
        .iter()
        .skip(1)
        .map(ngx_str_to_string)
        .collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    let parsed = match core_check::parse(&refs) {
        Ok(a) => a,
        Err(e) => return conf_error(cf, &e.to_string()),
    };
    // SAFETY: cf is live; the pool outlives the configuration and drops the
    // value with it.
    let pool = unsafe { ngx::core::Pool::from_ngx_pool((*cf).pool) };
    let args = pool.allocate(parsed);
    if args.is_null() {
        return ngx::core::NGX_CONF_ERROR;
    }
    scf.check = args;
    // SAFETY: the directive is only allowed in upstream blocks; no other
    // reference to the main conf is live while a directive is handled.
    unsafe {
        let name = ngx_str_to_string(&upstream_conf_of_conf(&mut *cf).host);
        main_conf_of_conf(&mut *cf)
            .check_directives
            .push((name, scf as *const SrvConf));
    }
    ngx::core::NGX_CONF_OK
}

/// `init_upstream` of an upstream with `deep_sched_check`: refuses it
/// without a `zone` (the results are shared by every worker, and with a
/// `zone` so is round robin's view of the peers), and builds what each
/// check connects to. Returns false after logging the error.
///
/// # Safety
/// Configuration time; `us` is the live upstream, `peers` its primary list.
pub unsafe fn init_upstream(
    cf: *mut ngx_conf_t,
    us: *mut ngx_http_upstream_srv_conf_t,
    scf: &SrvConf,
    up: &mut UpstreamConf,
    peers: *mut ngx_http_upstream_rr_peers_t,
) -> bool {
    if scf.check.is_null() {
        up.check = None;
        return true;
    }
    // SAFETY: us is live; scf.check lives in the configuration pool.
    let (zone, args) = unsafe { ((*us).shm_zone, (*scf.check).clone()) };
    if zone.is_null() {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "\"deep_sched_check\" in upstream \"{}\" needs a \"zone\" directive in the upstream \
             (every worker reads the checks' results)",
            up.name
        );
        return false;
    }
    let mut addrs = Vec::new();
    let mut sni = Vec::new();
    // SAFETY: configuration time, single process; the peers are live.
    unsafe {
        let mut p = (*peers).peer;
        while !p.is_null() {
            sni.push(sni_name(&ngx_str_to_string(&(*p).server)));
            let len = (*p).socklen as usize;
            let mut bytes = vec![0u8; len].into_boxed_slice();
            ptr::copy_nonoverlapping((*p).sockaddr as *const u8, bytes.as_mut_ptr(), len);
            if let Some(port) = args.port {
                ngx_inet_set_port(bytes.as_mut_ptr().cast(), port);
            }
            addrs.push(bytes);
            p = (*p).next;
        }
    }
    let request = match args.kind {
        CheckType::Http => args.request(&up.name).into_bytes(),
        CheckType::Tcp => Vec::new(),
    };
    let ssl = if args.tls {
        // SAFETY: cf is live.
        match unsafe { tls_context(cf) } {
            Some(s) => s,
            None => {
                ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "\"deep_sched_check\" in upstream \"{}\": cannot create the TLS context",
                    up.name
                );
                return false;
            }
        }
    } else {
        ptr::null_mut()
    };
    up.check = Some(UpstreamCheck {
        args,
        request,
        addrs,
        ssl,
        sni,
    });
    true
}

/// The SNI name for a `server` line, as a C string.
fn sni_name(server: &str) -> Option<std::ffi::CString> {
    core_check::sni_host(server).and_then(|h| std::ffi::CString::new(h).ok())
}

/// A client TLS context (TLS 1.2 and 1.3, OpenSSL's default ciphers, no
/// certificate verification, as `proxy_ssl` without `proxy_ssl_verify`),
/// freed with the configuration pool.
unsafe fn tls_context(cf: *mut ngx_conf_t) -> Option<*mut ngx::ffi::ngx_ssl_t> {
    // SAFETY: cf and its pool are live; the context is zeroed like
    // nginx's own (ngx_pcalloc) before ngx_ssl_create fills it.
    unsafe {
        let pool = ngx::core::Pool::from_ngx_pool((*cf).pool);
        let ssl = pool.calloc_type::<ngx::ffi::ngx_ssl_t>();
        if ssl.is_null() {
            return None;
        }
        (*ssl).log = (*cf).log;
        let protocols = (ngx::ffi::NGX_SSL_TLSv1_2 | ngx::ffi::NGX_SSL_TLSv1_3) as usize;
        if ngx::ffi::ngx_ssl_create(ssl, protocols, ptr::null_mut()) != NGX_OK as ngx_int_t {
            return None;
        }
        let cln = ngx_pool_cleanup_add((*cf).pool, 0);
        if cln.is_null() {
            return None;
        }
        (*cln).handler = Some(ngx::ffi::ngx_ssl_cleanup_ctx);
        (*cln).data = ssl.cast();
        let mut ciphers = ngx::ngx_string!("DEFAULT");
        if ngx::ffi::ngx_ssl_ciphers(cf, ssl, &mut ciphers, 0) != NGX_OK as ngx_int_t {
            return None;
        }
        Some(ssl)
    }
}

/// One agent's check timer in one process.
#[repr(C)]
struct CheckTimer {
    ev: ngx_event_t,
    /// The main configuration (hence the cycle) the timer was started for.
    main: *const MainConf,
    agent: usize,
    tick_ms: u64,
    lease_ms: u64,
    /// Whether this process held the lease at the last tick.
    holding: bool,
    /// Per upstream (agent order), per peer: when the next check is due
    /// (monotonic ms), and the check in flight (null: none).
    due: Vec<Vec<u64>>,
    running: Vec<Vec<*mut Check>>,
}

/// One check in flight.
struct Check {
    timer: *mut CheckTimer,
    upstream: usize,
    peer: usize,
    pc: ngx_peer_connection_t,
    /// The connection's log: the cycle's, with a level that keeps nginx's
    /// per-connection errors out (see the module doc).
    log: ngx_log_t,
    name: ngx_str_t,
    started_ms: u64,
    connected: bool,
    /// The TLS handshake is done (`tls`).
    tls_done: bool,
    sent: usize,
    got: usize,
    buf: [u8; MAX_STATUS_LINE],
}

/// Starts the check timers of `main`'s agents that have checks, once per
/// cycle (called by `crate::agent::start_timers`).
///
/// # Safety
/// `cycle` must be the live current cycle, its event loop initialised, and
/// `main` its configuration.
pub unsafe fn start_timers(cycle: *mut ngx_cycle_t, main: &MainConf) {
    // SAFETY: the cycle log lives as long as the cycle.
    let log = unsafe { (*cycle).log };
    let mut timers: Vec<Box<CheckTimer>> = Vec::new();
    for agent in &main.agents {
        let min_interval = agent
            .upstreams
            .iter()
            .filter_map(|u| u.check.as_ref().map(|c| c.args.interval_ms))
            .min();
        let Some(min_interval) = min_interval else {
            continue;
        };
        let tick = tick_ms(min_interval);
        let mut t = Box::new(CheckTimer {
            // SAFETY: a zeroed ngx_event_t is the documented starting state.
            ev: unsafe { core::mem::zeroed() },
            main,
            agent: agent.index,
            tick_ms: tick,
            lease_ms: lease_ms(tick),
            holding: false,
            due: agent
                .upstreams
                .iter()
                .map(|u| vec![0; u.peers.len()])
                .collect(),
            running: agent
                .upstreams
                .iter()
                .map(|u| vec![ptr::null_mut(); u.peers.len()])
                .collect(),
        });
        t.ev.handler = Some(on_timer);
        t.ev.data = (&mut *t as *mut CheckTimer).cast();
        t.ev.log = log;
        t.ev.set_cancelable(1);
        // SAFETY: the event lives in its box until the cycle's pool cleanup
        // deletes it from the timer tree and frees it. The first tick comes
        // at once: a fresh zone's peers are unchecked.
        unsafe { ngx_add_timer(&mut t.ev, 1) };
        timers.push(t);
    }
    if timers.is_empty() {
        return;
    }
    // SAFETY: as in crate::agent::start_timers: the cleanup runs when the
    // cycle is destroyed, before the configuration the timers point at.
    unsafe {
        let cln = ngx_pool_cleanup_add((*cycle).pool, 0);
        if cln.is_null() {
            core::mem::forget(timers);
            return;
        }
        (*cln).handler = Some(drop_timers);
        (*cln).data = Box::into_raw(Box::new(timers)).cast();
    }
}

/// Pool cleanup of a cycle: closes its checks in flight, gives up its
/// leases and deletes its timers.
unsafe extern "C" fn drop_timers(data: *mut c_void) {
    no_unwind((), || {
        // SAFETY: data is the box start_timers leaked for this cleanup.
        let mut timers = unsafe { Box::from_raw(data as *mut Vec<Box<CheckTimer>>) };
        for t in timers.iter_mut() {
            for row in t.running.iter_mut() {
                for c in row.iter_mut() {
                    let check = core::mem::replace(c, ptr::null_mut());
                    if !check.is_null() {
                        // SAFETY: a check in flight owns its box and
                        // connection; nothing else refers to them.
                        unsafe {
                            let check = Box::from_raw(check);
                            close_check(&check);
                        }
                    }
                }
            }
            // SAFETY: the configuration outlives this cleanup (registered
            // after it, so run before it is freed).
            let main = unsafe { &*t.main };
            if let Some(view) = ZoneView::of(main) {
                // SAFETY: ngx_pid is this process's pid.
                view.agent(t.agent)
                    .check_lease
                    .release(unsafe { ngx_pid } as u64);
            }
            if t.ev.timer_set() != 0 {
                // SAFETY: the event is in the timer tree.
                unsafe { ngx_del_timer(&mut t.ev) };
            }
        }
    })
}

unsafe extern "C" fn on_timer(ev: *mut ngx_event_t) {
    no_unwind((), || {
        // SAFETY: ev.data is the CheckTimer that owns ev; its configuration
        // lives as long as its cycle, whose pool deletes the timer first.
        unsafe {
            if ngx_exiting != 0 || ngx_quit != 0 || ngx_terminate != 0 {
                // Stop renewing: another process takes over.
                return;
            }
            let tp = (*ev).data as *mut CheckTimer;
            if ngx_cycle != (*(*tp).main).cycle {
                // A single-process reload: the new cycle's timers check.
                return;
            }
            tick(tp);
            ngx_add_timer(ev, (*tp).tick_ms as ngx_msec_t);
        }
    })
}

/// Renews or takes the lease; the holder starts the checks that are due.
/// The timer is used through `tp` only: a check that fails at once
/// finishes inside `start_check` and updates the timer's tables.
unsafe fn tick(tp: *mut CheckTimer) {
    // SAFETY: the timer is live; nothing else refers to it during the
    // tick but the checks started from it, through the same pointer.
    let (main, agent_index, lease, was_holding) =
        unsafe { (&*(*tp).main, (*tp).agent, (*tp).lease_ms, (*tp).holding) };
    let Some(view) = ZoneView::of(main) else {
        return;
    };
    let Some(agent) = main.agents.get(agent_index) else {
        return;
    };
    // SAFETY: the event loop's clock and this process's pid.
    let (now, me) = unsafe { (ngx_current_msec as u64, ngx_pid as u64) };
    let holding = view
        .agent(agent_index)
        .check_lease
        .try_hold(me, now, lease, process_alive);
    // SAFETY: short-lived accesses to the live timer's fields.
    unsafe {
        if holding && !was_holding {
            // Just took over: check everything now.
            for row in (*tp).due.iter_mut() {
                row.fill(now);
            }
        }
        (*tp).holding = holding;
    }
    if !holding {
        return;
    }
    for (u, up) in agent.upstreams.iter().enumerate() {
        let Some(check) = &up.check else {
            continue;
        };
        for p in 0..up.peers.len().min(check.addrs.len()) {
            // SAFETY: as above; the tables have a row per upstream and a
            // cell per peer (built from the same configuration).
            unsafe {
                if !(&(*tp).running)[u][p].is_null() || now < (&(*tp).due)[u][p] {
                    continue;
                }
                (&mut (*tp).due)[u][p] = now + check.args.interval_ms;
                // The check refers back to the timer only while it is in
                // its `running` table.
                start_check(tp, u, p);
            }
        }
    }
}

/// Connects to peer `p` of upstream `u` (agent order) and starts a check.
unsafe fn start_check(tp: *mut CheckTimer, u: usize, p: usize) {
    // SAFETY: the timer and its configuration are live.
    let main = unsafe { &*(*tp).main };
    // SAFETY: as above.
    let up = &main.agents[unsafe { (*tp).agent }].upstreams[u];
    let Some(check) = &up.check else {
        return;
    };
    // SAFETY: ngx_cycle is live; its log lives as long as it.
    let cycle_log = unsafe { (*ngx_cycle).log };
    let mut c = Box::new(Check {
        timer: tp,
        upstream: u,
        peer: p,
        // SAFETY: a zeroed peer connection is nginx's starting state too
        // (it callocs them).
        pc: unsafe { core::mem::zeroed() },
        // SAFETY: a copy of the cycle's log (plain data and pointers to
        // what lives as long as the cycle).
        log: unsafe { *cycle_log },
        name: ngx_str_t {
            len: up.peers[p].len(),
            data: up.peers[p].as_ptr() as *mut u8,
        },
        // SAFETY: the event loop's clock.
        started_ms: unsafe { ngx_current_msec } as u64,
        connected: false,
        tls_done: false,
        sent: 0,
        got: 0,
        buf: [0; MAX_STATUS_LINE],
    });
    c.log.log_level = NGX_LOG_EMERG as usize;
    let addr = &check.addrs[p];
    c.pc.sockaddr = addr.as_ptr() as *mut sockaddr;
    c.pc.socklen = addr.len() as socklen_t;
    c.pc.name = &mut c.name;
    c.pc.get = Some(ngx_event_get_peer);
    c.pc.log = &mut c.log;
    c.pc.set_log_error(ngx::ffi::ngx_connection_log_error_e_NGX_ERROR_INFO);
    let raw = Box::into_raw(c);
    // SAFETY: the timer is live; its table has this cell.
    unsafe { (&mut (*tp).running)[u][p] = raw };
    // SAFETY: raw is the live check; pc is fully set up.
    unsafe {
        let rc = ngx_event_connect_peer(&mut (*raw).pc);
        // connect()'s errno, before anything else can change it.
        let err = std::io::Error::last_os_error();
        if rc == NGX_ERROR as ngx_int_t {
            // A local failure (no socket, no free connection, the event
            // loop refused it: e.g. after a reload with `master_process
            // off`, whose new cycle has no connections), not the peer's:
            // no result, the next interval tries again.
            (&mut (*tp).running)[u][p] = ptr::null_mut();
            drop(Box::from_raw(raw));
            return;
        }
        if (*raw).pc.connection.is_null() {
            // NGX_DECLINED: connect() failed at once (refused, unreachable);
            // nginx closed the socket.
            let (e, why) = classify(&err);
            finish(raw, e, 0, &why);
            return;
        }
        let conn = (*raw).pc.connection;
        (*conn).data = raw.cast();
        (*(*conn).read).handler = Some(on_read);
        (*(*conn).write).handler = Some(on_write);
        // Not cancelable: a worker told to quit waits for its checks in
        // flight (at most `timeout=`) instead of leaving their sockets open.
        ngx_add_timer((*conn).read, check.args.timeout_ms as ngx_msec_t);
        if rc != NGX_AGAIN as ngx_int_t {
            // Connected at once.
            on_write((*conn).write);
        }
    }
}

/// A connection error as a check error and its reason.
fn classify(err: &std::io::Error) -> (CheckError, String) {
    match err.raw_os_error().map(|e| e as u32) {
        Some(ngx::ffi::ECONNREFUSED) => (CheckError::Refused, "connection refused".into()),
        Some(ngx::ffi::ECONNRESET) => (CheckError::Reset, "connection reset".into()),
        Some(ngx::ffi::ETIMEDOUT) => (CheckError::Timeout, "connection timed out".into()),
        _ => (CheckError::Connect, format!("connect failed: {err}")),
    }
}

/// The pending error of a connecting socket (`SO_ERROR`), if any.
unsafe fn socket_error(c: *mut ngx_connection_t) -> Option<std::io::Error> {
    let mut err: i32 = 0;
    let mut len = core::mem::size_of::<i32>() as socklen_t;
    // SAFETY: c is a live connection with an open socket.
    let rc = unsafe {
        ngx::ffi::getsockopt(
            (*c).fd,
            ngx::ffi::SOL_SOCKET as i32,
            ngx::ffi::SO_ERROR as i32,
            (&mut err as *mut i32).cast(),
            &mut len,
        )
    };
    if rc == -1 {
        return Some(std::io::Error::last_os_error());
    }
    (err != 0).then(|| std::io::Error::from_raw_os_error(err))
}

/// Checks a connect that completed (first readiness). Finishes the check
/// and returns false when it failed.
unsafe fn connected(raw: *mut Check, c: *mut ngx_connection_t) -> bool {
    // SAFETY: raw is the live check of connection c.
    unsafe {
        if (*raw).connected {
            return true;
        }
        if let Some(err) = socket_error(c) {
            let (e, why) = classify(&err);
            finish(raw, e, 0, &why);
            return false;
        }
        (*raw).connected = true;
        true
    }
}

unsafe extern "C" fn on_write(wev: *mut ngx_event_t) {
    no_unwind((), || {
        // SAFETY: the event's data is our connection, whose data is the
        // live check (a finished check's connection is closed, so its
        // handlers never run again).
        unsafe {
            let c = (*wev).data as *mut ngx_connection_t;
            let raw = (*c).data as *mut Check;
            if !connected(raw, c) {
                return;
            }
            let Some(check) = upstream_check(raw) else {
                return finish(raw, CheckError::Internal, 0, "configuration gone");
            };
            if !check.ssl.is_null() && !(*raw).tls_done {
                return start_tls(raw, c, check);
            }
            if check.args.kind == CheckType::Tcp {
                return finish(raw, CheckError::None, 0, "");
            }
            let req = &check.request;
            while (*raw).sent < req.len() {
                let Some(send) = (*c).send else {
                    return finish(raw, CheckError::Internal, 0, "no send function");
                };
                let n = send(
                    c,
                    req.as_ptr().add((*raw).sent) as *mut u8,
                    req.len() - (*raw).sent,
                );
                if n == NGX_AGAIN as isize {
                    break;
                }
                if n < 0 {
                    let err = std::io::Error::last_os_error();
                    let (e, why) = classify(&err);
                    return finish(raw, e, 0, &format!("sending the check: {why}"));
                }
                (*raw).sent += n as usize;
            }
            if ngx_handle_write_event(wev, 0) != NGX_OK as ngx_int_t {
                finish(raw, CheckError::Internal, 0, "cannot watch the connection");
            }
        }
    })
}

unsafe extern "C" fn on_read(rev: *mut ngx_event_t) {
    no_unwind((), || {
        // SAFETY: as in on_write.
        unsafe {
            let c = (*rev).data as *mut ngx_connection_t;
            let raw = (*c).data as *mut Check;
            let Some(check) = upstream_check(raw) else {
                return finish(raw, CheckError::Internal, 0, "configuration gone");
            };
            if (*rev).timedout() != 0 {
                let why = format!("no answer within {}ms", check.args.timeout_ms);
                return finish(raw, CheckError::Timeout, 0, &why);
            }
            if !connected(raw, c) {
                return;
            }
            if !check.ssl.is_null() && !(*raw).tls_done {
                // Readable before the write handler started TLS.
                return start_tls(raw, c, check);
            }
            if check.args.kind == CheckType::Tcp {
                // Connected (and through TLS when asked): it passes.
                return finish(raw, CheckError::None, 0, "");
            }
            loop {
                let got = (*raw).got;
                let Some(recv) = (*c).recv else {
                    return finish(raw, CheckError::Internal, 0, "no recv function");
                };
                let n = if got < MAX_STATUS_LINE {
                    recv(c, (*raw).buf.as_mut_ptr().add(got), MAX_STATUS_LINE - got)
                } else {
                    0
                };
                if n == NGX_AGAIN as isize {
                    if ngx_handle_read_event(rev, 0) != NGX_OK as ngx_int_t {
                        finish(raw, CheckError::Internal, 0, "cannot watch the connection");
                    }
                    return;
                }
                if n < 0 {
                    let err = std::io::Error::last_os_error();
                    let (e, why) = classify(&err);
                    return finish(raw, e, 0, &why);
                }
                (*raw).got += n as usize;
                let verdict = parse_status_line(&(&(*raw).buf)[..(*raw).got]);
                match verdict {
                    StatusLine::Status(code) => {
                        return if check.args.status_passes(code) {
                            finish(raw, CheckError::None, code, "")
                        } else {
                            finish(
                                raw,
                                CheckError::Status,
                                code,
                                &format!("answered {code}, not in status="),
                            )
                        };
                    }
                    StatusLine::Garbage(why) => {
                        return finish(
                            raw,
                            CheckError::Garbage,
                            0,
                            &format!("answered garbage: {why}"),
                        )
                    }
                    StatusLine::Partial if n == 0 => {
                        return finish(
                            raw,
                            CheckError::Closed,
                            0,
                            "closed the connection before a status line",
                        )
                    }
                    StatusLine::Partial => {}
                }
            }
        }
    })
}

/// Closes a check's connection, if any: frees its TLS connection without
/// waiting for the peer's close_notify, closes the socket (which deletes
/// its timer and events) and destroys the connection's pool.
unsafe fn close_check(check: &Check) {
    let c = check.pc.connection;
    if c.is_null() {
        return;
    }
    // SAFETY: c is the check's open connection.
    unsafe {
        if !(*c).ssl.is_null() {
            (*(*c).ssl).set_no_wait_shutdown(1);
            (*(*c).ssl).set_no_send_shutdown(1);
            ngx::ffi::ngx_ssl_shutdown(c);
        }
        let pool = (*c).pool;
        ngx_close_connection(c);
        if !pool.is_null() {
            ngx::ffi::ngx_destroy_pool(pool);
        }
    }
}

/// Starts (or goes on with) the TLS handshake of a connected check.
unsafe fn start_tls(raw: *mut Check, c: *mut ngx_connection_t, check: &UpstreamCheck) {
    // SAFETY: raw is the live check of the open connection c; the TLS
    // context lives as long as the configuration.
    unsafe {
        if (*c).ssl.is_null() {
            if (*c).pool.is_null() {
                // ngx_ssl_create_connection allocates from the connection's
                // pool: a small one of its own, destroyed in close_check.
                (*c).pool = ngx::ffi::ngx_create_pool(512, (*c).log);
                if (*c).pool.is_null() {
                    return finish(raw, CheckError::Internal, 0, "no memory for TLS");
                }
            }
            let flags = (ngx::ffi::NGX_SSL_BUFFER | ngx::ffi::NGX_SSL_CLIENT) as usize;
            if ngx::ffi::ngx_ssl_create_connection(check.ssl, c, flags) != NGX_OK as ngx_int_t {
                return finish(raw, CheckError::Tls, 0, "cannot start TLS");
            }
            if let Some(Some(name)) = check.sni.get((*raw).peer) {
                ngx::ffi::SSL_ctrl(
                    (*(*c).ssl).connection,
                    ngx::ffi::SSL_CTRL_SET_TLSEXT_HOSTNAME as i32,
                    ngx::ffi::TLSEXT_NAMETYPE_host_name as _,
                    name.as_ptr() as *mut c_void,
                );
            }
        }
        let rc = ngx::ffi::ngx_ssl_handshake(c);
        if rc == NGX_AGAIN as ngx_int_t {
            // nginx's handshake handler calls this once done or timed out.
            (*(*c).ssl).handler = Some(on_handshake);
            return;
        }
        on_handshake(c);
    }
}

/// The TLS handshake ended (done, failed or timed out).
unsafe extern "C" fn on_handshake(c: *mut ngx_connection_t) {
    no_unwind((), || {
        // SAFETY: as in on_write.
        unsafe {
            let raw = (*c).data as *mut Check;
            if (*(*c).read).timedout() != 0 || (*(*c).write).timedout() != 0 {
                let ms = upstream_check(raw).map_or(0, |u| u.args.timeout_ms);
                return finish(
                    raw,
                    CheckError::Timeout,
                    0,
                    &format!("no answer within {ms}ms"),
                );
            }
            if (*c).ssl.is_null() || (*(*c).ssl).handshaked() == 0 {
                return finish(raw, CheckError::Tls, 0, "TLS handshake failed");
            }
            (*raw).tls_done = true;
            (*(*c).read).handler = Some(on_read);
            (*(*c).write).handler = Some(on_write);
            on_write((*c).write);
        }
    })
}

/// The upstream's check configuration of a live check.
unsafe fn upstream_check<'a>(raw: *mut Check) -> Option<&'a UpstreamCheck> {
    // SAFETY: the check, its timer and the configuration are live.
    unsafe {
        let t = &*(*raw).timer;
        let main = &*t.main;
        main.agents
            .get(t.agent)?
            .upstreams
            .get((*raw).upstream)?
            .check
            .as_ref()
    }
}

/// Ends a check: closes its connection, records the result, logs a
/// transition, frees the check.
unsafe fn finish(raw: *mut Check, error: CheckError, status: u16, why: &str) {
    // SAFETY: raw is the live check, owned by its timer's running table,
    // which gives it up here.
    let check = unsafe {
        let t = &mut *(*raw).timer;
        t.running[(*raw).upstream][(*raw).peer] = ptr::null_mut();
        Box::from_raw(raw)
    };
    // SAFETY: the check's connection, if any, is open.
    unsafe { close_check(&check) };
    // SAFETY: the timer and its configuration are live.
    let (t, main) = unsafe { (&*check.timer, &*(*check.timer).main) };
    let Some(view) = ZoneView::of(main) else {
        return;
    };
    let agent = &main.agents[t.agent];
    let up = &agent.upstreams[check.upstream];
    let Some(uc) = &up.check else {
        return;
    };
    // SAFETY: the event loop's clock.
    let now = unsafe { ngx_current_msec } as u64;
    let slot = view.peer(up.slot_base + check.peer);
    let from = slot.health.record(
        error,
        status,
        wall_ms(),
        now.saturating_sub(check.started_ms),
        uc.args.fall,
        uc.args.rise,
    );
    if from.is_some() {
        recount_down(agent, &view);
    }
    // SAFETY: ngx_cycle's log lives as long as the cycle.
    let log = unsafe { (*ngx_cycle).log };
    let name = &up.peers[check.peer];
    let plural = |n: u32| if n == 1 { "" } else { "s" };
    let cells = &slot.health;
    match (from, cells.health()) {
        (Some(_), Health::Down) => {
            let n = cells.fails.load(Ordering::Relaxed);
            ngx_log_error!(
                NGX_LOG_WARN,
                log,
                "deep_sched: peer {} of upstream \"{}\" is down: {} ({} failed check{})",
                name,
                up.name,
                why,
                n,
                plural(n)
            );
        }
        (Some(_), Health::Up) => {
            let n = cells.passes.load(Ordering::Relaxed);
            ngx_log_error!(
                NGX_LOG_NOTICE,
                log,
                "deep_sched: peer {} of upstream \"{}\" is up ({} passed check{})",
                name,
                up.name,
                n,
                plural(n)
            );
            if from == Some(Health::Down) && agent.args.slow_start_ms > 0 {
                // Back from the checks' exclusion: ramp up as after a failure.
                slot.slow_start_since_ms
                    .store(now.max(1), Ordering::Relaxed);
                view.agent(agent.index)
                    .slow_start_until_ms
                    .fetch_max(now + agent.args.slow_start_ms, Ordering::Relaxed);
            }
        }
        _ => {}
    }
}

/// Adds what the checks found to a sample line (for the learner).
pub fn add_health(agent: &AgentConf, view: &ZoneView, sample: &mut SampleRecord) {
    for (up, su) in agent.upstreams.iter().zip(sample.upstreams.iter_mut()) {
        if up.check.is_none() {
            continue;
        }
        for (i, sp) in su.peers.iter_mut().enumerate().take(up.peers.len()) {
            let h = &view.peer(up.slot_base + i).health;
            sp.health = Some(SampleHealth {
                state: h.health().name().to_owned(),
                passes: h.passes.load(Ordering::Relaxed),
                fails: h.fails.load(Ordering::Relaxed),
                latency_ms: h.latency_ms.load(Ordering::Relaxed),
                error: CheckError::from_u32(h.error.load(Ordering::Relaxed))
                    .name()
                    .map(str::to_owned),
            });
        }
    }
}

/// The status page's view of a peer's health (`None` without checks).
pub fn peer_health(up: &UpstreamConf, view: &ZoneView, i: usize) -> Option<PeerHealth> {
    up.check.as_ref()?;
    let h = &view.peer(up.slot_base + i).health;
    let status = h.status.load(Ordering::Relaxed);
    Some(PeerHealth {
        state: h.health().name().to_owned(),
        passes: h.passes.load(Ordering::Relaxed),
        fails: h.fails.load(Ordering::Relaxed),
        checks: h.checks.load(Ordering::Relaxed),
        last_check_msec: h.wall_ms.load(Ordering::Relaxed),
        last_latency_msec: h.latency_ms.load(Ordering::Relaxed),
        last_error: CheckError::from_u32(h.error.load(Ordering::Relaxed))
            .name()
            .map(str::to_owned),
        last_status: u16::try_from(status).ok().filter(|&s| s != 0),
    })
}

/// Stores how many of `agent`'s checked peers are down (the request path
/// reads no peer's health while none is).
fn recount_down(agent: &AgentConf, view: &ZoneView) {
    let n: usize = agent
        .upstreams
        .iter()
        .filter(|u| u.check.is_some())
        .map(|u| {
            (0..u.peers.len())
                .filter(|&i| view.peer(u.slot_base + i).health.is_down())
                .count()
        })
        .sum();
    view.agent(agent.index)
        .checks_down
        .store(n as u64, Ordering::Relaxed);
}

/// A reload that moved peers to a new zone (the layout changed): keep what
/// the checks found for peers that still exist (same upstream, same
/// address) from the running configuration's zone.
pub fn inherit_health(old: &MainConf, new: &MainConf, new_view: &ZoneView) {
    let Some(old_view) = ZoneView::of(old) else {
        return;
    };
    for agent in &new.agents {
        for up in agent.upstreams.iter().filter(|u| u.check.is_some()) {
            let Some(old_up) = old
                .agents
                .iter()
                .flat_map(|a| a.upstreams.iter())
                .find(|o| o.name == up.name && o.check.is_some())
            else {
                continue;
            };
            for (i, name) in up.peers.iter().enumerate() {
                if let Some(j) = old_up.peers.iter().position(|n| n == name) {
                    new_view
                        .peer(up.slot_base + i)
                        .health
                        .copy_from(&old_view.peer(old_up.slot_base + j).health);
                }
            }
        }
        recount_down(agent, new_view);
    }
}
