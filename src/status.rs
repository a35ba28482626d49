//! `deep_sched_status`: a location handler serving every agent's counters
//! and decision as JSON, or Prometheus text with `?format=prometheus`.

use core::ffi::{c_char, c_void};
use core::ptr;
use core::sync::atomic::Ordering;

use deep_sched_core::api::{peer_state, ApiError};
use deep_sched_core::choose::slow_start_factor;
use deep_sched_core::counters::percentile;
use deep_sched_core::directive::ModeArg;
use deep_sched_core::publish::buffer_of;
use deep_sched_core::status::{
    AgentStatus, PeerStatus, Percentiles, PolicyStatus, StatusDocument, UpstreamStatus,
};
use ngx::ffi::{
    ngx_buf_t, ngx_chain_t, ngx_command_t, ngx_conf_t, ngx_create_temp_buf, ngx_current_msec,
    ngx_http_arg, ngx_http_core_module, ngx_http_discard_request_body, ngx_http_output_filter,
    ngx_http_request_t, ngx_http_send_header, ngx_int_t, ngx_str_t, ngx_timeofday, NGX_DECLINED,
    NGX_ERROR, NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_OK,
};

use crate::config::{conf_error, main_conf_of_request, ngx_str_to_string, MainConf};
use crate::zone::ZoneView;
use crate::{conf_args, no_unwind};

/// `deep_sched_status [write=on|off];` in a location: the status, and
/// with `write=on` the runtime API ([`crate::api`]) too. The handler itself
/// says which: no location conf of the module's own is needed.
pub unsafe extern "C" fn deep_sched_status(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    no_unwind(ngx::core::NGX_CONF_ERROR, || {
        // SAFETY: cf->args holds the directive's words.
        let words: Vec<String> = unsafe { conf_args(cf) }
            .iter()
            .skip(1)
            .map(ngx_str_to_string)
            .collect();
        let write = match words.first().map(String::as_str) {
            None | Some("write=off") => false,
            Some("write=on") => true,
            Some(w) => {
                return conf_error(
                    cf,
                    &format!(
                        "invalid parameter \"{w}\" in \"deep_sched_status\": expected \"write=on\" or \"write=off\""
                    ),
                )
            }
        };
        // SAFETY: in a location block cf->ctx is an http conf ctx whose
        // loc_conf array holds the core module's location conf.
        unsafe {
            let ctx = (*cf).ctx as *mut ngx::ffi::ngx_http_conf_ctx_t;
            let clcf = *(*ctx).loc_conf.add(ngx_http_core_module.ctx_index)
                as *mut ngx::ffi::ngx_http_core_loc_conf_t;
            (*clcf).handler = Some(if write {
                crate::api::api_handler
            } else {
                status_handler
            });
        }
        ngx::core::NGX_CONF_OK
    })
}

/// Builds the status document from the configuration and the zone.
pub fn snapshot(main: &MainConf) -> StatusDocument {
    let tp = ngx_timeofday();
    let now_wall = (tp.sec as u64) * 1000 + tp.msec as u64;
    // SAFETY: read of the event loop's clock.
    let now_mono = unsafe { ngx_current_msec } as u64;
    let mut agents = Vec::new();
    let Some(view) = ZoneView::of(main) else {
        return StatusDocument {
            module: concat!("deep_sched/", env!("CARGO_PKG_VERSION")).into(),
            now_msec: now_wall,
            agents,
        };
    };
    for a in &main.agents {
        let slot = view.agent(a.index);
        let published = slot.read(|_| {}).unwrap_or_default();
        let since = now_mono
            .saturating_sub(slot.prev_decision_ms.load(Ordering::Relaxed))
            .max(1) as f64
            / 1000.0;
        let upstreams = a
            .upstreams
            .iter()
            .map(|u| UpstreamStatus {
                name: u.name.clone(),
                peers: u
                    .peers
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        let s = view.peer(u.slot_base + i);
                        let c = view.counters(u.slot_base + i, s.inflight());
                        let prev = s.prev.requests.load(Ordering::Relaxed);
                        PeerStatus {
                            server: name.clone(),
                            request_counter: c.requests,
                            in_bytes: c.in_bytes,
                            out_bytes: c.out_bytes,
                            responses: c.responses.into(),
                            failures: c.failures,
                            request_msec_counter: c.response_msec,
                            request_msec: c.response_msec.checked_div(c.requests).unwrap_or(0),
                            request_msecs: Percentiles {
                                p50: percentile(&c.latency_hist, 0.50),
                                p95: percentile(&c.latency_hist, 0.95),
                                p99: percentile(&c.latency_hist, 0.99),
                            },
                            latency_hist: c.latency_hist,
                            inflight: c.inflight,
                            latency_ewma_msec: s.latency_ms(now_mono),
                            slow_start_factor: slow_start_factor(
                                now_mono,
                                s.slow_start_since_ms.load(Ordering::Relaxed),
                                a.args.slow_start_ms,
                            ),
                            rps: c.requests.saturating_sub(prev) as f64 / since,
                            weight: s.weight[buffer_of(published.epoch)].load(Ordering::Relaxed),
                            configured_weight: u.configured_weights[i],
                            id: u.slot_base + i,
                            state: peer_state(s.admin.load(Ordering::Relaxed), c.inflight).into(),
                            admin_weight: Some(s.admin_weight.load(Ordering::Relaxed))
                                .filter(|&w| w > 0),
                            health: crate::check::peer_health(u, &view, i),
                            policy_peer: a
                                .policy
                                .as_ref()
                                .map(|p| p.peer_knowledge(&u.name, name).into()),
                        }
                    })
                    .collect(),
            })
            .collect();
        agents.push(AgentStatus {
            paused: slot.paused.load(Ordering::Relaxed) != 0,
            pinned: slot.pinned.load(Ordering::Relaxed) != 0,
            name: a.key.clone(),
            mode: match a.args.mode {
                ModeArg::Observe => "observe",
                ModeArg::Explore => "explore",
                ModeArg::Policy(_) => "policy",
            }
            .into(),
            choose: a.args.choose.name().into(),
            interval_msec: a.interval_ms,
            policy: a.policy.as_ref().map(|p| PolicyStatus {
                file: a.policy_path.clone().unwrap_or_default(),
                format_version: p.format_version(),
                states: p.states(),
                actions: p.actions(),
                kind: p.kind().into(),
                provenance: p.provenance_json(),
            }),
            // Epoch 1 is the starting weights, not a decision.
            decisions: published.epoch.saturating_sub(1),
            last_decision_msec: published.last_decision_wall_ms,
            last_decision_pid: published.pid,
            state: published.state,
            action: published.action,
            log_likelihood: published.log_likelihood,
            ood: published.ood,
            explored: published.explored,
            scaling: match (&a.policy, published.state) {
                (Some(p), Some(s)) => p.scaling(s).map(str::to_owned),
                _ => None,
            },
            checker_pid: a
                .upstreams
                .iter()
                .any(|u| u.check.is_some())
                .then(|| slot.check_lease.holder(now_mono))
                .flatten(),
            upstreams,
        });
    }
    StatusDocument {
        module: concat!("deep_sched/", env!("CARGO_PKG_VERSION")).into(),
        now_msec: now_wall,
        agents,
    }
}

unsafe extern "C" fn status_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    no_unwind(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t, || {
        // SAFETY: nginx calls content handlers with a live request.
        unsafe { status_handler_inner(r) }
    })
}

/// GET and HEAD: the status document. Any other method on a read-only
/// location: 405 with a JSON error.
pub(crate) unsafe fn status_handler_inner(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: r is live for the whole handler.
    unsafe {
        if (*r).method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize == 0 {
            let rc = ngx_http_discard_request_body(r);
            if rc != NGX_OK as ngx_int_t {
                return rc;
            }
            let e = ApiError::new(
                405,
                "MethodNotAllowed",
                "this status location is read-only (\"deep_sched_status write=on;\" enables the runtime API)",
            );
            return send_body(r, 405, &e.to_json(), "application/json");
        }
        let rc = ngx_http_discard_request_body(r);
        if rc != NGX_OK as ngx_int_t {
            return rc;
        }
        let Some(main) = main_conf_of_request(&*r) else {
            return NGX_DECLINED as ngx_int_t;
        };
        let mut value = ngx_str_t {
            len: 0,
            data: ptr::null_mut(),
        };
        let prometheus = ngx_http_arg(r, c"format".as_ptr() as *mut u8, 6, &mut value)
            == NGX_OK as ngx_int_t
            && value.as_bytes() == b"prometheus";
        let doc = snapshot(main);
        let (body, ctype): (String, &str) = if prometheus {
            (doc.to_prometheus(), "text/plain; version=0.0.4")
        } else {
            (doc.to_json(), "application/json")
        };
        send_body(r, 200, &body, ctype)
    }
}

/// Sends a whole response: status, content type, body.
pub(crate) unsafe fn send_body(
    r: *mut ngx_http_request_t,
    status: usize,
    body: &str,
    ctype: &'static str,
) -> ngx_int_t {
    // SAFETY: r is live; the body is copied into a buffer of its pool.
    unsafe {
        (*r).headers_out.status = status;
        (*r).headers_out.content_length_n = body.len() as i64;
        (*r).headers_out.content_type_len = ctype.len();
        (*r).headers_out.content_type = ngx_str_t {
            len: ctype.len(),
            data: ctype.as_ptr() as *mut u8,
        };
        (*r).headers_out.content_type_lowcase = ptr::null_mut();
        let rc = ngx_http_send_header(r);
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || (*r).header_only() != 0 {
            return rc;
        }
        let b: *mut ngx_buf_t = ngx_create_temp_buf((*r).pool, body.len().max(1));
        if b.is_null() {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        ptr::copy_nonoverlapping(body.as_ptr(), (*b).last, body.len());
        (*b).last = (*b).last.add(body.len());
        (*b).set_last_buf(if (*r).main == r { 1 } else { 0 });
        (*b).set_last_in_chain(1);
        let mut out = ngx_chain_t {
            buf: b,
            next: ptr::null_mut(),
        };
        ngx_http_output_filter(r, &mut out)
    }
}
