//! The decision loop: one timer per agent in every worker; the worker that
//! wins the interval's compare-and-swap decides for all of them.
//!
//! A decision reads every peer's cumulative counters from the zone, hands
//! them with the previous snapshot to the core's [`Decider`] (features, GMM
//! state, action), publishes the weights under the agent's sequence lock
//! and appends one JSON line to the sample log.

use core::cell::RefCell;
use core::sync::atomic::Ordering;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

use deep_sched_core::counters::PeerCounters;
use deep_sched_core::decision::{Decider, Decision};
use ngx::ffi::{
    ngx_add_timer, ngx_current_msec, ngx_cycle_t, ngx_event_t, ngx_exiting, ngx_http_conf_ctx_t,
    ngx_http_module, ngx_quit, ngx_terminate, ngx_timeofday, NGX_LOG_ERR,
};
use ngx::ngx_log_error;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::directive::{AgentConf, MainConf};
use crate::zone::{Published, ZoneView};
use crate::{module, no_unwind};

thread_local! {
    /// The worker's random source (explore draws, epsilon, p2c): seeded per
    /// process, never shared, so no lock.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_entropy());
}

/// Runs `f` with the worker's random number generator.
pub fn with_rng<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

/// The module's main conf in a cycle, if the `http` block has one.
unsafe fn main_conf(cycle: *mut ngx_cycle_t) -> Option<&'static mut MainConf> {
    // SAFETY: conf_ctx[ngx_http_module.index] is the http conf ctx (or null
    // without an http block); its main_conf array holds ours.
    unsafe {
        let ctx = *(*cycle).conf_ctx.add(ngx_http_module.index) as *mut ngx_http_conf_ctx_t;
        if ctx.is_null() {
            return None;
        }
        (*(*ctx).main_conf.add(module().ctx_index) as *mut MainConf).as_mut()
    }
}

/// First mapping of a fresh zone: publish the starting weights (the
/// configured ones, or the policy's default action) and schedule the first
/// decision one interval from now.
pub fn init_slots(main: &MainConf, view: &ZoneView) {
    // SAFETY: read of the event loop's monotonic clock (the master's, which
    // the workers share: it is CLOCK_MONOTONIC based).
    let now = unsafe { ngx_current_msec } as u64;
    for agent in &main.agents {
        let start = agent.decider_template().initial_weights();
        let slot = view.agent(agent.index);
        slot.publish(&Published::default(), || {
            for up in &agent.upstreams {
                for (i, w) in start[up.index].iter().enumerate() {
                    view.peer(up.slot_base + i)
                        .weight
                        .store(*w, Ordering::Relaxed);
                }
            }
        });
        slot.prev_decision_ms.store(now, Ordering::Relaxed);
        slot.next_decision_ms
            .store(now + agent.interval_ms, Ordering::Release);
    }
}

impl AgentConf {
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
    }
}

/// `init_process`: a decision timer per agent.
pub unsafe fn start_timers(cycle: *mut ngx_cycle_t) {
    // SAFETY: cycle is live.
    let Some(main) = (unsafe { main_conf(cycle) }) else {
        return;
    };
    if main.view().is_none() {
        return;
    }
    for agent in &mut main.agents {
        agent.decider = Some(agent.decider_template());
        // SAFETY: a zeroed ngx_event_t is the documented starting state.
        let mut ev: Box<ngx_event_t> = Box::new(unsafe { core::mem::zeroed() });
        ev.handler = Some(on_timer);
        ev.data = (agent as *mut AgentConf).cast();
        // SAFETY: the cycle log lives as long as the cycle.
        ev.log = unsafe { (*cycle).log };
        // Do not hold graceful shutdown for this timer.
        ev.set_cancelable(1);
        let interval = agent.interval_ms;
        let ev = agent.timer.insert(ev);
        // SAFETY: the event lives in the agent conf for the whole cycle.
        unsafe { ngx_add_timer(&mut **ev, interval as ngx::ffi::ngx_msec_t) };
    }
}

unsafe extern "C" fn on_timer(ev: *mut ngx_event_t) {
    no_unwind((), || {
        // SAFETY: ev.data was set to the agent conf, which outlives the
        // timer (both belong to the cycle); nginx is single threaded here.
        unsafe {
            let agent = &mut *((*ev).data as *mut AgentConf);
            if ngx_exiting != 0 || ngx_quit != 0 || ngx_terminate != 0 {
                return;
            }
            let next = tick(agent, (*ev).log);
            ngx_add_timer(ev, next.max(10) as ngx::ffi::ngx_msec_t);
        }
    })
}

/// Claims and runs a due decision; returns ms until the next one.
unsafe fn tick(agent: &mut AgentConf, log: *mut ngx::ffi::ngx_log_t) -> u64 {
    // SAFETY: the cycle's main conf owns this agent; its view was mapped.
    let main = unsafe { main_conf(ngx::ffi::ngx_cycle as *mut ngx_cycle_t) };
    let Some(view) = main.and_then(|m| m.view()) else {
        return agent.interval_ms;
    };
    // SAFETY: ngx_current_msec is the event loop's monotonic clock.
    let now = unsafe { ngx_current_msec } as u64;
    let slot = view.agent(agent.index);
    if let Some((dt, first)) = slot.try_claim(now, agent.interval_ms) {
        if first {
            // First interval of a fresh zone: only take the baseline.
            for up in &agent.upstreams {
                for i in 0..up.peers.len() {
                    let p = view.peer(up.slot_base + i);
                    p.prev.store(&p.live.load(p.inflight()));
                }
            }
        } else {
            decide(agent, &view, dt, log);
        }
    }
    slot.due_in(now).max(1)
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
            let inflight = s.inflight();
            c.push(s.live.load(inflight));
            p.push(s.prev.load(0));
        }
        cur.push(c);
        prev.push(p);
    }
    (cur, prev)
}

fn current_weights(agent: &AgentConf, view: &ZoneView) -> Vec<Vec<u32>> {
    agent
        .upstreams
        .iter()
        .map(|up| {
            (0..up.peers.len())
                .map(|i| view.peer(up.slot_base + i).weight.load(Ordering::Relaxed))
                .collect()
        })
        .collect()
}

fn wall_ms() -> u64 {
    let tp = ngx_timeofday();
    (tp.sec as u64) * 1000 + tp.msec as u64
}

unsafe fn decide(
    agent: &mut AgentConf,
    view: &ZoneView,
    dt_ms: u64,
    log: *mut ngx::ffi::ngx_log_t,
) {
    let (cur, prev) = snapshot(agent, view);
    let in_force = current_weights(agent, view);
    let time_ms = wall_ms();
    let Some(decider) = agent.decider.as_mut() else {
        return;
    };
    let seq = view.agent(agent.index).epoch() + 1;
    let decision: Decision =
        with_rng(|rng| decider.decide(&prev, &cur, dt_ms, &in_force, time_ms, seq, rng));

    let slot = view.agent(agent.index);
    let published = Published {
        epoch: 0,
        state: decision.state,
        action: decision.action,
        ood: decision.ood,
        explored: decision.explored,
        log_likelihood: decision.log_likelihood,
        last_decision_wall_ms: time_ms,
    };
    slot.publish(&published, || {
        for up in &agent.upstreams {
            for (i, w) in decision.weights[up.index].iter().enumerate() {
                view.peer(up.slot_base + i)
                    .weight
                    .store(*w, Ordering::Relaxed);
            }
        }
    });
    for (up, counters) in agent.upstreams.iter().zip(&cur) {
        for (i, c) in counters.iter().enumerate() {
            view.peer(up.slot_base + i).prev.store(c);
        }
    }

    if !agent.log.is_null() {
        let mut line = match serde_json::to_vec(&decision.sample) {
            Ok(l) => l,
            Err(e) => {
                ngx_log_error!(NGX_LOG_ERR, log, "deep_sched: cannot encode sample: {}", e);
                return;
            }
        };
        line.push(b'\n');
        // SAFETY: agent.log is an nginx open file whose fd is valid in the
        // worker (opened by the master, reopened on USR1); the File wrapper
        // is never dropped so the fd is not closed here. One write(2) of a
        // whole line with O_APPEND keeps lines from different workers whole;
        // one small write per interval does not hold up the event loop.
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
}
