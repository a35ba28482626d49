#!/usr/bin/env bash
# Sourced by the lab scripts: finds the nginx to drive and, when present,
# the deep_sched module and learner. Sets NGINX, MODULE_ARGS (array).
#   NGINX=/path/to/nginx        use that nginx (built-in balancers only,
#                                unless it is build/sbin/nginx)
#   DEEP_SCHED=0                do not evaluate deep_sched even if built
lab_find_nginx() {
    if [[ -n "${NGINX:-}" ]]; then
        :
    elif [[ -x build/sbin/nginx ]]; then
        NGINX=build/sbin/nginx
    else
        NGINX=$(ls -t target/release/build/nginx-sys-*/out/objs/nginx \
                      target/debug/build/nginx-sys-*/out/objs/nginx 2>/dev/null | head -n 1 || true)
        [[ -z "$NGINX" ]] && NGINX=$(command -v nginx || true)
        [[ -z "$NGINX" && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
    fi
    if [[ -z "$NGINX" || ! -x "$NGINX" ]]; then
        echo "lab: no nginx found (run scripts/build.sh or set NGINX=...)" >&2
        return 1
    fi
    MODULE_ARGS=()
    local so=build/modules/ngx_http_deep_sched_module.so learner=""
    for l in build/bin/deep-sched target/release/deep-sched; do
        [[ -x $l ]] && { learner=$l; break; }
    done
    if [[ "${DEEP_SCHED:-1}" != 0 && "$NGINX" == build/sbin/nginx && -f $so && -n $learner ]]; then
        MODULE_ARGS=(--module "$so" --learner "$learner")
    fi
}
