//! `$deep_sched_state` and `$deep_sched_peer`, for `log_format`.
//!
//! Both read the request's balancer data (set by `init_peer` as the module
//! context): the agent's current state, and the peer of the last try.

use core::ptr;

use ngx::ffi::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_http_variable_value_t, ngx_int_t,
    ngx_pnalloc, ngx_str_t, ngx_uint_t, NGX_ERROR, NGX_HTTP_VAR_NOCACHEABLE, NGX_OK,
};
use ngx::ngx_string;

use crate::upstream::PeerData;
use crate::zone::ZoneView;
use crate::{module, no_unwind};

type Getter = unsafe extern "C" fn(
    *mut ngx_http_request_t,
    *mut ngx_http_variable_value_t,
    usize,
) -> ngx_int_t;

pub unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    no_unwind(NGX_ERROR as ngx_int_t, || {
        let vars: [(ngx_str_t, Getter); 2] = [
            (ngx_string!("deep_sched_state"), get_state),
            (ngx_string!("deep_sched_peer"), get_peer),
        ];
        for (mut name, getter) in vars {
            // SAFETY: cf is live; nginx copies nothing from `name` it does
            // not own (the literal is static).
            let v = unsafe {
                ngx_http_add_variable(cf, &mut name, NGX_HTTP_VAR_NOCACHEABLE as ngx_uint_t)
            };
            if v.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            // SAFETY: v is the variable nginx just created.
            unsafe { (*v).get_handler = Some(getter) };
        }
        NGX_OK as ngx_int_t
    })
}

unsafe fn peer_data(r: *mut ngx_http_request_t) -> Option<&'static PeerData> {
    // SAFETY: ctx[ctx_index] is null or the PeerData set by init_peer in
    // the request's pool.
    unsafe { (*(*r).ctx.add(module().ctx_index) as *const PeerData).as_ref() }
}

unsafe fn set_value(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    bytes: &[u8],
) -> ngx_int_t {
    // SAFETY: the value is copied into the request pool, which outlives the
    // variable's use (logging happens before the pool is destroyed).
    unsafe {
        let data = ngx_pnalloc((*r).pool, bytes.len().max(1)) as *mut u8;
        if data.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len());
        (*v).data = data;
        (*v).set_len(bytes.len() as u32);
        (*v).set_valid(1);
        (*v).set_no_cacheable(1);
        (*v).set_not_found(0);
    }
    NGX_OK as ngx_int_t
}

unsafe fn not_found(v: *mut ngx_http_variable_value_t) -> ngx_int_t {
    // SAFETY: v is the variable value nginx asks us to fill.
    unsafe { (*v).set_not_found(1) };
    NGX_OK as ngx_int_t
}

unsafe extern "C" fn get_state(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    no_unwind(NGX_ERROR as ngx_int_t, || {
        // SAFETY: r and v are live for the call.
        unsafe {
            let Some(pd) = peer_data(r) else {
                return not_found(v);
            };
            let main = &*pd.main;
            let Some(view) = ZoneView::of(main) else {
                return not_found(v);
            };
            match view.agent(pd.agent).read(|_| {}).and_then(|p| p.state) {
                Some(s) => set_value(r, v, s.to_string().as_bytes()),
                None => set_value(r, v, b"-"),
            }
        }
    })
}

unsafe extern "C" fn get_peer(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    no_unwind(NGX_ERROR as ngx_int_t, || {
        // SAFETY: r and v are live; peer_name points into the peers' memory
        // (configuration pool or zone), which outlives the request.
        unsafe {
            match peer_data(r) {
                Some(pd) if !pd.peer_name.data.is_null() => {
                    let name = pd.peer_name.as_bytes().to_vec();
                    set_value(r, v, &name)
                }
                _ => not_found(v),
            }
        }
    })
}
