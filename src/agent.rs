//! The decision loop: one timer per agent in every worker; the worker that
//! wins the interval's compare-and-swap decides for all of them.
//!
//! A decision reads every peer's cumulative counters from the zone, hands
//! them with the previous snapshot to the core's `Decider` (features, GMM
//! state, action), publishes the weights and appends one JSON line to the
//! sample log. The decider also hands back the in-flight counts of
//! processes that died (`crate::zone`).
//!
//! Timers belong to their cycle: each holds the main configuration it was
//! started for, and the cycle's pool deletes them when it is destroyed. In
//! single-process mode (`master_process off`) a reload makes a new cycle
//! without calling `init_process` again: the old cycle's timer starts the
//! new cycle's timers once and stops.

use core::ffi::c_void;
use core::sync::atomic::Ordering;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

use deep_sched_core::counters::PeerCounters;
use deep_sched_core::decision::Decision;
use ngx::ffi::{
    ngx_add_timer, ngx_current_msec, ngx_cycle, ngx_cycle_t, ngx_del_timer, ngx_event_t,
    ngx_exiting, ngx_log_t, ngx_msec_t, ngx_pid, ngx_pool_cleanup_add, ngx_quit, ngx_terminate,
    ngx_timeofday, NGX_LOG_ERR, NGX_LOG_NOTICE, NGX_LOG_WARN,
};
use ngx::ngx_log_error;

use crate::config::{main_conf_of_cycle, AgentConf, MainConf};
use crate::zone::{Published, ZoneView};
use crate::{no_unwind, with_rng};

thread_local! {
    /// The decision timers alive in this process (any cycle).
    static TIMERS: core::cell::RefCell<Vec<*mut ngx_event_t>> =
        const { core::cell::RefCell::new(Vec::new()) };
}

/// After a reload in single-process mode: fire this process's timers at
/// once, so the old cycle's hand over to the new cycle's without waiting
/// for a whole old interval (which may be an hour).
pub fn hurry_timers() {
    TIMERS.with(|t| {
        for &ev in t.borrow().iter() {
            // SAFETY: the events in the list are alive (drop_timers removes
            // them before freeing); ngx_add_timer moves a set timer.
            unsafe { ngx_add_timer(ev, 1) };
        }
    });
}

/// One agent's decision timer in one process.
#[repr(C)]
struct AgentTimer {
    ev: ngx_event_t,
    /// The main configuration (hence the cycle) the timer was started for.
    main: *const MainConf,
    agent: usize,
}

/// Starts the decision timers of `cycle` in this process (once per cycle)
/// and claims the process's in-flight shard. Called from `init_process`
/// in workers and single-process mode, and by an old cycle's timer after a
/// single-process reload.
///
/// # Safety
/// `cycle` must be the live current cycle, its event loop initialised.
pub unsafe fn start_timers(cycle: *mut ngx_cycle_t) {
    // SAFETY: the caller passes the live cycle.
    let Some(main) = main_conf_of_cycle(unsafe { &*cycle }) else {
        return;
    };
    let Some(view) = ZoneView::of(main) else {
        return;
    };
    if main.timers_started.replace(true) {
        return;
    }
    // SAFETY: as promised by the caller.
    unsafe { crate::check::start_timers(cycle, main) };
    // SAFETY: ngx_pid is this process's pid, set before any module runs.
    let pid = unsafe { ngx_pid } as u64;
    let (shard, returned) = view.claim_shard(pid);
    main.shard.set(shard);
    main.counter_shard.set(view.claim_counter_shard(pid));
    // SAFETY: the cycle log lives as long as the cycle.
    let log = unsafe { (*cycle).log };
    log_handed_back(log, returned);
    if main.shard.get().is_none() {
        ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "deep_sched: no free in-flight shard for process {}: its in-flight counts \
             cannot be reconciled if it crashes",
            pid
        );
    }
    let mut timers: Vec<Box<AgentTimer>> = Vec::with_capacity(main.agents.len());
    for agent in &main.agents {
        *agent.decider.borrow_mut() = Some(agent.decider_template());
        let mut t = Box::new(AgentTimer {
            // SAFETY: a zeroed ngx_event_t is the documented starting state.
            ev: unsafe { core::mem::zeroed() },
            main,
            agent: agent.index,
        });
        t.ev.handler = Some(on_timer);
        t.ev.data = (&mut *t as *mut AgentTimer).cast();
        t.ev.log = log;
        // Do not hold graceful shutdown for this timer.
        t.ev.set_cancelable(1);
        // SAFETY: the event lives in its box until the cycle's pool cleanup
        // deletes it from the timer tree and frees it.
        unsafe { ngx_add_timer(&mut t.ev, agent.interval_ms as ngx_msec_t) };
        TIMERS.with(|l| l.borrow_mut().push(&mut t.ev));
        timers.push(t);
    }
    // SAFETY: the cycle's pool is live; the cleanup runs when the cycle is
    // destroyed, before the configuration the timers point at is freed
    // (cleanups run in reverse order of registration).
    unsafe {
        let cln = ngx_pool_cleanup_add((*cycle).pool, 0);
        if cln.is_null() {
            // Leave the timers running: the cycle lives as long as the process.
            core::mem::forget(timers);
            return;
        }
        (*cln).handler = Some(drop_timers);
        (*cln).data = Box::into_raw(Box::new(timers)).cast();
    }
}

/// Pool cleanup of a cycle: deletes its timers from the timer tree and
/// frees them.
unsafe extern "C" fn drop_timers(data: *mut c_void) {
    no_unwind((), || {
        // SAFETY: data is the box start_timers leaked for this cleanup.
        let mut timers = unsafe { Box::from_raw(data as *mut Vec<Box<AgentTimer>>) };
        for t in timers.iter_mut() {
            let ev: *mut ngx_event_t = &mut t.ev;
            TIMERS.with(|l| l.borrow_mut().retain(|&e| e != ev));
            if t.ev.timer_set() != 0 {
                // SAFETY: the event is in the timer tree.
                unsafe { ngx_del_timer(&mut t.ev) };
            }
        }
    })
}

unsafe extern "C" fn on_timer(ev: *mut ngx_event_t) {
    no_unwind((), || {
        // SAFETY: ev.data is the AgentTimer that owns ev; its configuration
        // lives as long as its cycle, whose pool deletes the timer first.
        // nginx is single threaded here.
        unsafe {
            if ngx_exiting != 0 || ngx_quit != 0 || ngx_terminate != 0 {
                return;
            }
            let t = &*((*ev).data as *const AgentTimer);
            let main = &*t.main;
            if ngx_cycle != main.cycle {
                // A single-process reload: the new cycle takes over.
                start_timers(ngx_cycle as *mut ngx_cycle_t);
                return;
            }
            let Some(agent) = main.agents.get(t.agent) else {
                return;
            };
            let next = tick(main, agent, (*ev).log);
            ngx_add_timer(ev, next.max(10) as ngx_msec_t);
        }
    })
}

/// Claims and runs a due decision; returns ms until the next one.
fn tick(main: &MainConf, agent: &AgentConf, log: *mut ngx_log_t) -> u64 {
    let Some(view) = ZoneView::of(main) else {
        return agent.interval_ms;
    };
    // SAFETY: ngx_current_msec is the event loop's monotonic clock.
    let now = unsafe { ngx_current_msec } as u64;
    let slot = view.agent(agent.index);
    if let Some(dt) = slot.try_claim(now, agent.interval_ms) {
        // SAFETY: ngx_pid is this process's pid.
        let me = unsafe { ngx_pid } as u64;
        log_handed_back(log, view.reclaim_dead_shards(me));
        decide(agent, &view, dt, log);
    }
    slot.due_in(now).max(1)
}

fn log_handed_back(log: *mut ngx_log_t, returned: i64) {
    if returned != 0 {
        ngx_log_error!(
            NGX_LOG_NOTICE,
            log,
            "deep_sched: {} requests counted in flight by exited processes were handed back",
            returned
        );
    }
}

fn snapshot(
    agent: &AgentConf,
    view: &ZoneView,
) -> (Vec<Vec<PeerCounters>>, Vec<Vec<PeerCounters>>) {
    let mut cur = Vec::with_capacity(agent.upstreams.len());
    let mut prev = Vec::with_capacity(agent.upstreams.len());
    for up in &agent.upstreams {
        let mut c = Vec::with_capacity(up.peers.len());
        let mut p = Vec::with_capacity(up.peers.len());
        for i in 0..up.peers.len() {
            let s = view.peer(up.slot_base + i);
            c.push(view.counters(up.slot_base + i, s.inflight()));
            p.push(s.prev.load(0));
        }
        cur.push(c);
        prev.push(p);
    }
    (cur, prev)
}

/// The weights in force: the newest published ones.
fn current_weights(agent: &AgentConf, view: &ZoneView) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = agent
        .upstreams
        .iter()
        .map(|up| vec![0; up.peers.len()])
        .collect();
    let read = view.agent(agent.index).read(|b| {
        for (up, w) in agent.upstreams.iter().zip(out.iter_mut()) {
            for (i, x) in w.iter_mut().enumerate() {
                *x = view.peer(up.slot_base + i).weight[b].load(Ordering::Relaxed);
            }
        }
    });
    if read.is_none() {
        // Only this worker writes decisions; nothing can interfere.
        return agent
            .upstreams
            .iter()
            .map(|u| u.configured_weights.clone())
            .collect();
    }
    out
}

/// Milliseconds since the Unix epoch, nginx's cached wall clock.
pub fn wall_ms() -> u64 {
    let tp = ngx_timeofday();
    (tp.sec as u64) * 1000 + tp.msec as u64
}

fn decide(agent: &AgentConf, view: &ZoneView, dt_ms: u64, log: *mut ngx_log_t) {
    let (cur, prev) = snapshot(agent, view);
    let in_force = current_weights(agent, view);
    let time_ms = wall_ms();
    let slot = view.agent(agent.index);
    // Epoch 1 is the starting weights published with the zone, so the k-th
    // decision is published as epoch k + 1 and numbered k.
    let seq = slot.epoch();
    // Everything is computed before anything is published.
    let mut decision: Decision = {
        let mut decider = agent.decider.borrow_mut();
        let Some(decider) = decider.as_mut() else {
            return;
        };
        with_rng(|rng| decider.decide(&prev, &cur, dt_ms, &in_force, time_ms, seq, rng))
    };
    // Paused or pinned through the runtime API: the decision is still made
    // and logged, but the weights published (and logged) are the ones in
    // force, so the sample log stays true.
    let paused = slot.paused.load(Ordering::Acquire) != 0;
    let pinned = slot.pinned.load(Ordering::Acquire) != 0;
    if paused || pinned {
        for up in &agent.upstreams {
            for (i, w) in decision.weights[up.index].iter_mut().enumerate() {
                *w = if pinned {
                    view.peer(up.slot_base + i)
                        .pinned_weight
                        .load(Ordering::Relaxed)
                } else {
                    up.configured_weights[i]
                };
            }
        }
        // The rule's choice was not applied: no action, nothing explored,
        // and the weights were certain.
        decision.action = None;
        decision.explored = false;
        decision.sample.action = None;
        decision.sample.explored = false;
        decision.sample.propensity = Some(1.0);
        decision.sample.weights = decision.weights.clone();
        decision.sample.admin = Some(if pinned { "pinned" } else { "paused" }.into());
    }
    let published = Published {
        epoch: 0,
        state: decision.state,
        action: decision.action,
        ood: decision.ood,
        explored: decision.explored,
        log_likelihood: decision.log_likelihood,
        last_decision_wall_ms: time_ms,
        // SAFETY: ngx_pid is this process's pid.
        pid: unsafe { ngx_pid } as u64,
    };
    slot.publish(&published, |b| {
        for up in &agent.upstreams {
            for (i, w) in decision.weights[up.index].iter().enumerate() {
                view.peer(up.slot_base + i).weight[b].store(*w, Ordering::Relaxed);
            }
        }
    });
    for (up, counters) in agent.upstreams.iter().zip(&cur) {
        for (i, c) in counters.iter().enumerate() {
            view.peer(up.slot_base + i).prev.store(c);
        }
    }
    // The interval before the one just closed: now that seq + 1 is
    // published, a try of seq − 1 that ends from here on counts as late, so
    // its cells are complete. Taken even without a log (the cells are
    // reused four epochs on).
    let mut sample = decision.sample;
    if seq >= 2 {
        let counts: Vec<Vec<_>> = agent
            .upstreams
            .iter()
            .map(|up| {
                (0..up.peers.len())
                    .map(|i| view.peer(up.slot_base + i).take_dispatched(seq - 1))
                    .collect()
            })
            .collect();
        sample.attach_dispatched(seq - 1, &counts);
    }

    if agent.log.is_null() {
        return;
    }
    crate::check::add_health(agent, view, &mut sample);
    let mut line = match serde_json::to_vec(&sample) {
        Ok(l) => l,
        Err(e) => {
            ngx_log_error!(NGX_LOG_ERR, log, "deep_sched: cannot encode sample: {}", e);
            return;
        }
    };
    line.push(b'\n');
    // SAFETY: agent.log is an nginx open file whose fd is valid in the
    // worker (opened by the master, reopened on USR1); the File wrapper is
    // never dropped so the fd is not closed here. One write(2) of a whole
    // line with O_APPEND keeps lines from different workers whole; one small
    // write per interval does not hold up the event loop.
    unsafe {
        let fd = (*agent.log).fd;
        let file = ManuallyDrop::new(std::fs::File::from_raw_fd(fd));
        if let Err(e) = (&*file).write_all(&line) {
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "deep_sched: cannot append to sample log \"{}\": {}",
                agent.args.log.as_deref().unwrap_or(""),
                e
            );
        }
    }
}
