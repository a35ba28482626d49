# nginx 1.28 with the deep_sched module, its example configurations and
# policies, and the lab's backend emulator and load generator.
#
# Nothing is compiled here: the image COPYs what scripts/build.sh built on
# the host (no Rust toolchain or nginx source needs to be pulled into an
# image). The host is Debian bookworm, so the binaries' glibc, OpenSSL 3 and
# PCRE2 match a bookworm base. Build it with scripts/container-build.sh, or:
#
#   scripts/build.sh
#   docker build -t deep-sched/nginx .                       # base debian:bookworm-slim (pulled)
#   docker build --build-arg BASE=deep-sched/base:bookworm -t deep-sched/nginx .   # local base
#
# Layout: nginx's compiled-in prefix /usr/local/nginx, whose conf/ is
# /etc/deep_sched (so `nginx -t` and `nginx -s reload` need no flags);
# policies in /etc/deep_sched/policies (mount yours over a file there).
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# curl for the HEALTHCHECK; a no-op on deep-sched/base:bookworm, which has it.
RUN if ! command -v curl >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends \
            ca-certificates curl libpcre2-8-0 libssl3 zlib1g && \
        rm -rf /var/lib/apt/lists/*; \
    fi && \
    groupadd --system nginx && \
    useradd --system --gid nginx --home-dir /nonexistent --shell /usr/sbin/nologin nginx && \
    mkdir -p /usr/local/nginx/sbin /usr/local/nginx/modules /usr/local/nginx/logs \
             /usr/local/nginx/temp /var/log/deep_sched /etc/deep_sched/policies && \
    ln -s /etc/deep_sched /usr/local/nginx/conf && \
    chown nginx:nginx /var/log/deep_sched /usr/local/nginx/temp

COPY build/sbin/nginx /usr/local/nginx/sbin/nginx
COPY build/modules/ngx_http_deep_sched_module.so /usr/local/nginx/modules/
COPY build/bin/deep-sched-backend build/bin/deep-sched-load /usr/local/bin/
COPY nginx-conf/ /etc/deep_sched/examples/
COPY policies/ /etc/deep_sched/policies/
COPY docker/policies/ /etc/deep_sched/policies/
COPY docker/nginx.conf /etc/deep_sched/nginx.conf
RUN ln -s /usr/local/nginx/sbin/nginx /usr/sbin/nginx && nginx -t

EXPOSE 8080
# SIGQUIT: graceful shutdown (in-flight requests finish), as nginx's own image.
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5s --timeout=2s --start-period=2s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:8080/deep_sched || exit 1
CMD ["nginx", "-g", "daemon off;"]
