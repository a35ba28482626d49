//! The runtime API of `deep_sched_status write=on`: drain, mark down and
//! re-weight peers, pause or pin an agent, without a reload.
//!
//! Routes and bodies are parsed by [`deep_sched_core::api`]; here the names
//! are resolved against the configuration and the change is written to the
//! shared zone (per peer: admin flags and weight; per agent: paused, pinned
//! and the pinned weights), then the agent's `admin_epoch` is bumped. Every
//! worker compares that epoch on its next pick (one load) and applies the
//! change to its peers (`crate::upstream`'s `sync_weights`); the decider
//! publishes the weights in force from then on.

use core::sync::atomic::Ordering;

use deep_sched_core::api::{
    self, flags, peer_state, AgentChange, ApiError, ApiRequest, PeerChange,
};
use ngx::ffi::{
    ngx_http_core_module, ngx_http_finalize_request, ngx_http_read_client_request_body,
    ngx_http_request_t, ngx_int_t, NGX_DONE, NGX_HTTP_GET, NGX_HTTP_HEAD,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SPECIAL_RESPONSE, NGX_LOG_NOTICE,
};
use ngx::ngx_log_error;
use serde_json::json;

use crate::config::{main_conf_of_request, AgentConf, MainConf, UpstreamConf};
use crate::no_unwind;
use crate::status::{send_body, status_handler_inner};
use crate::zone::ZoneView;

/// Content handler of a `deep_sched_status write=on` location.
pub unsafe extern "C" fn api_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    no_unwind(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t, || {
        // SAFETY: nginx calls content handlers with a live request.
        unsafe { api_handler_inner(r) }
    })
}

unsafe fn api_handler_inner(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: r is live for the whole handler.
    unsafe {
        if (*r).method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize != 0 {
            return status_handler_inner(r);
        }
        // The body arrives asynchronously; `body_read` answers.
        let rc = ngx_http_read_client_request_body(r, Some(body_read));
        if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
            return rc;
        }
    }
    NGX_DONE as ngx_int_t
}

unsafe extern "C" fn body_read(r: *mut ngx_http_request_t) {
    let rc = no_unwind(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t, || {
        // SAFETY: nginx calls the post handler with the live request.
        unsafe { respond(r) }
    });
    // SAFETY: as above; the request was kept alive for this call.
    unsafe { ngx_http_finalize_request(r, rc) };
}

unsafe fn send_error(r: *mut ngx_http_request_t, e: &ApiError) -> ngx_int_t {
    // SAFETY: r is live.
    unsafe { send_body(r, usize::from(e.status), &e.to_json(), "application/json") }
}

/// The request body, from the buffers nginx read it into.
unsafe fn body_bytes(r: *mut ngx_http_request_t) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    // SAFETY: after the read, r->request_body (if any) holds the chain.
    unsafe {
        let rb = (*r).request_body;
        if rb.is_null() {
            return Ok(out);
        }
        let mut cl = (*rb).bufs;
        while !cl.is_null() {
            let b = (*cl).buf;
            if (*b).in_file() != 0 {
                return Err(ApiError::new(
                    413,
                    "BodyTooLarge",
                    "the request body is larger than client_body_buffer_size",
                ));
            }
            let len = (*b).last.offset_from((*b).pos).max(0) as usize;
            if out.len() + len > api::MAX_BODY_BYTES {
                return Err(ApiError::new(
                    413,
                    "BodyTooLarge",
                    format!(
                        "the request body is larger than {} bytes",
                        api::MAX_BODY_BYTES
                    ),
                ));
            }
            out.extend_from_slice(core::slice::from_raw_parts((*b).pos, len));
            cl = (*cl).next;
        }
    }
    Ok(out)
}

/// The path after the location's name, from the raw URI (agent names are
/// percent-encoded file paths: the decoded URI would split them).
unsafe fn api_path(r: *mut ngx_http_request_t) -> String {
    // SAFETY: r is live; its loc_conf array holds the core module's conf.
    unsafe {
        let raw = String::from_utf8_lossy((*r).unparsed_uri.as_bytes()).into_owned();
        let path = raw.split('?').next().unwrap_or("").to_owned();
        let clcf = *(*r).loc_conf.add(ngx_http_core_module.ctx_index)
            as *mut ngx::ffi::ngx_http_core_loc_conf_t;
        let name = String::from_utf8_lossy((*clcf).name.as_bytes()).into_owned();
        match path.strip_prefix(name.as_str()) {
            Some(rest) => rest.to_owned(),
            None => path,
        }
    }
}

unsafe fn respond(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: r is live for the whole call.
    unsafe {
        let Some(main) = main_conf_of_request(&*r) else {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        };
        let body = match body_bytes(r) {
            Ok(b) => b,
            Err(e) => return send_error(r, &e),
        };
        let method = String::from_utf8_lossy((*r).method_name.as_bytes()).into_owned();
        let path = api_path(r);
        let result = api::route(&method, &path, &body).and_then(|req| {
            let view = ZoneView::of(main).ok_or_else(|| {
                ApiError::new(503, "ZoneNotReady", "the shared zone is not mapped yet")
            })?;
            apply(main, &view, &req)
        });
        match result {
            Ok((answer, change)) => {
                ngx_log_error!(
                    NGX_LOG_NOTICE,
                    (*(*r).connection).log,
                    "deep_sched: runtime API: {}",
                    change
                );
                send_body(r, 200, &answer.to_string(), "application/json")
            }
            Err(e) => send_error(r, &e),
        }
    }
}

fn upstream_names(main: &MainConf) -> String {
    let names: Vec<&str> = main
        .agents
        .iter()
        .flat_map(|a| a.upstreams.iter().map(|u| u.name.as_str()))
        .collect();
    names.join(", ")
}

fn find_upstream<'a>(
    main: &'a MainConf,
    name: &str,
) -> Result<(&'a AgentConf, &'a UpstreamConf), ApiError> {
    main.agents
        .iter()
        .find_map(|a| a.upstreams.iter().find(|u| u.name == name).map(|u| (a, u)))
        .ok_or_else(|| {
            ApiError::new(
                404,
                "UpstreamNotFound",
                format!(
                    "upstream \"{name}\" not found (upstreams with deep_sched: {})",
                    upstream_names(main)
                ),
            )
        })
}

fn find_peer(up: &UpstreamConf, id: usize) -> Result<usize, ApiError> {
    let ids = up.slot_base..up.slot_base + up.peers.len();
    if ids.contains(&id) {
        return Ok(id - up.slot_base);
    }
    Err(ApiError::new(
        404,
        "PeerNotFound",
        format!(
            "upstream \"{}\" has no peer with id {id} (its ids are {} to {})",
            up.name,
            ids.start,
            ids.end.saturating_sub(1)
        ),
    ))
}

fn find_agent<'a>(main: &'a MainConf, key: &str) -> Result<&'a AgentConf, ApiError> {
    main.agents
        .iter()
        .find(|a| {
            a.key == key
                || key.parse::<usize>().is_ok_and(|i| i == a.index)
                || a.upstreams.iter().any(|u| u.name == key)
        })
        .ok_or_else(|| {
            let names: Vec<&str> = main.agents.iter().map(|a| a.key.as_str()).collect();
            ApiError::new(
                404,
                "AgentNotFound",
                format!(
                    "agent \"{key}\" not found (agents: {}; or give its position or one of its upstreams)",
                    names.join(", ")
                ),
            )
        })
}

fn peer_json(view: &ZoneView, up: &UpstreamConf, i: usize) -> serde_json::Value {
    let s = view.peer(up.slot_base + i);
    json!({
        "id": up.slot_base + i,
        "server": up.peers[i],
        "state": peer_state(s.admin.load(Ordering::Relaxed), s.inflight()),
        "adminWeight": Some(s.admin_weight.load(Ordering::Relaxed)).filter(|&w| w > 0),
        "configuredWeight": up.configured_weights[i],
    })
}

/// Applies a request; returns the answer and a line for the error log.
fn apply(
    main: &MainConf,
    view: &ZoneView,
    req: &ApiRequest,
) -> Result<(serde_json::Value, String), ApiError> {
    match req {
        ApiRequest::PatchPeer {
            upstream,
            id,
            change,
        } => {
            let (agent, up) = find_upstream(main, upstream)?;
            let i = find_peer(up, *id)?;
            patch_peer(view, agent, up, i, change);
            Ok((
                peer_json(view, up, i),
                format!(
                    "upstream \"{upstream}\" peer {id} ({}): {}",
                    up.peers[i],
                    describe_peer_change(change)
                ),
            ))
        }
        ApiRequest::PatchAgent { agent, change } => {
            let a = find_agent(main, agent)?;
            patch_agent(view, a, change)?;
            let slot = view.agent(a.index);
            Ok((
                json!({
                    "name": a.key,
                    "paused": slot.paused.load(Ordering::Relaxed) != 0,
                    "pinned": slot.pinned.load(Ordering::Relaxed) != 0,
                }),
                format!("agent \"{}\": {}", a.key, describe_agent_change(change)),
            ))
        }
        ApiRequest::AddPeer { upstream, .. } => {
            let (_, up) = find_upstream(main, upstream)?;
            Err(membership_refused(up))
        }
        ApiRequest::DeletePeer { upstream, id } => {
            let (_, up) = find_upstream(main, upstream)?;
            find_peer(up, *id)?;
            Err(membership_refused(up))
        }
    }
}

/// Adding and removing peers needs the peer list to change at run time
/// (nginx's `resolve` life cycle), which the module does not follow yet.
fn membership_refused(up: &UpstreamConf) -> ApiError {
    if !up.has_zone {
        return ApiError::new(
            409,
            "UpstreamStatic",
            format!(
                "upstream \"{}\" has no zone: peers can only be added or removed where they \
                 live in shared memory (add \"zone NAME SIZE;\" to the upstream)",
                up.name
            ),
        );
    }
    ApiError::new(
        501,
        "NotImplemented",
        format!(
            "adding and removing peers of upstream \"{}\" at run time is not supported yet: \
             drain the peer ({{\"drain\": true}}) or change the configuration and reload",
            up.name
        ),
    )
}

fn patch_peer(view: &ZoneView, agent: &AgentConf, up: &UpstreamConf, i: usize, c: &PeerChange) {
    let s = view.peer(up.slot_base + i);
    for (on, flag) in [(c.drain, flags::DRAIN), (c.down, flags::DOWN)] {
        match on {
            Some(true) => {
                s.admin.fetch_or(flag, Ordering::Relaxed);
            }
            Some(false) => {
                s.admin.fetch_and(!flag, Ordering::Relaxed);
            }
            None => {}
        }
    }
    if let Some(w) = c.weight {
        s.admin_weight.store(w.unwrap_or(0), Ordering::Relaxed);
    }
    // Release: a worker that sees the new epoch sees the changes above.
    view.agent(agent.index)
        .admin_epoch
        .fetch_add(1, Ordering::Release);
}

fn patch_agent(view: &ZoneView, a: &AgentConf, c: &AgentChange) -> Result<(), ApiError> {
    let slot = view.agent(a.index);
    if let Some(Some(rows)) = &c.pin {
        // Check the whole shape before writing anything.
        if rows.len() != a.upstreams.len() {
            return Err(ApiError::new(
                400,
                "BadField",
                format!(
                    "\"pin\" must give one list of weights per upstream of agent \"{}\" ({}), got {}",
                    a.key,
                    a.upstreams.len(),
                    rows.len()
                ),
            ));
        }
        for (up, row) in a.upstreams.iter().zip(rows) {
            if row.len() != up.peers.len() {
                return Err(ApiError::new(
                    400,
                    "BadField",
                    format!(
                        "\"pin\" must give {} weights for upstream \"{}\", got {}",
                        up.peers.len(),
                        up.name,
                        row.len()
                    ),
                ));
            }
        }
        for (up, row) in a.upstreams.iter().zip(rows) {
            for (i, &w) in row.iter().enumerate() {
                view.peer(up.slot_base + i)
                    .pinned_weight
                    .store(w, Ordering::Relaxed);
            }
        }
        slot.pinned.store(1, Ordering::Relaxed);
    } else if let Some(None) = c.pin {
        slot.pinned.store(0, Ordering::Relaxed);
    }
    if let Some(p) = c.paused {
        slot.paused.store(u32::from(p), Ordering::Relaxed);
    }
    slot.admin_epoch.fetch_add(1, Ordering::Release);
    Ok(())
}

fn describe_peer_change(c: &PeerChange) -> String {
    let mut parts = Vec::new();
    if let Some(d) = c.drain {
        parts.push(format!("drain={d}"));
    }
    if let Some(d) = c.down {
        parts.push(format!("down={d}"));
    }
    match c.weight {
        Some(Some(w)) => parts.push(format!("weight={w}")),
        Some(None) => parts.push("weight=agent's".into()),
        None => {}
    }
    parts.join(" ")
}

fn describe_agent_change(c: &AgentChange) -> String {
    let mut parts = Vec::new();
    if let Some(p) = c.paused {
        parts.push(
            if p {
                "mode=observe (paused)"
            } else {
                "mode=policy (resumed)"
            }
            .to_owned(),
        );
    }
    match &c.pin {
        Some(Some(rows)) => parts.push(format!("pin={rows:?}")),
        Some(None) => parts.push("unpinned".into()),
        None => {}
    }
    parts.join(" ")
}
