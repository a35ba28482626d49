#!/usr/bin/env bash
# Runs nginx's own upstream tests (the nginx/nginx-tests Perl suite) with
# `deep_sched;` injected into every plain round-robin upstream block, so that
# nginx's expectations for round robin, max_fails/fail_timeout, max_conns,
# zone, keepalive, next_upstream, non-idempotent retries, TLS session reuse,
# body resend, ... are checked against the module in observe-only mode.
#
# No package registry carries nginx-tests, so the suite is not fetched here
# and this script is not part of scripts/test.sh. Get a checkout with
#   git clone https://github.com/nginx/nginx-tests
# and name it with NGINX_TESTS_DIR; without it the script says it skipped
# and exits 0.
#
# What it does:
#   1. picks the test files: by default every http test file (not stream_*,
#      mail_*) with an `upstream NAME {` block; NGINX_TESTS_FILES overrides;
#   2. copies them to a temporary directory and rewrites each http upstream
#      block that uses nginx's default round robin so `deep_sched;` is its
#      first line (before keepalive/sticky, which may follow). Blocks are left
#      alone when they use another balancing method (hash, ip_hash,
#      least_conn, least_time, random, ntlm) or a server with run-time name
#      resolution (`resolve`, `service=`), which deep_sched refuses. Prints,
#      per file, how many blocks were injected and why others were not; a file
#      with no injected block is reported and not run (it would test nothing
#      of deep_sched);
#   3. runs each file with `prove -v` under a per-file timeout, as an
#      unprivileged user (when started as root it installs the Perl
#      dependencies with apt-get if missing, then drops to NGINX_TESTS_USER),
#      with the module loaded through TEST_NGINX_GLOBALS;
#   4. prints a line per file (injected blocks, tests, failed, skipped, TODO,
#      seconds, result) and a total, and any line about deep_sched at warn
#      or above in nginx's error logs; a file that skips itself (a module or
#      daemon this machine lacks) is reported SKIPPED with its reason. Exits
#      non-zero if any file failed, timed out or was not run for lack of time.
#      Temporary files are removed.
#
# Environment:
#   NGINX_TESTS_DIR            nginx-tests checkout (required; else "skipped")
#   NGINX_BINARY               nginx to test        (default build/sbin/nginx)
#   MODULE_SO                  module to load       (default build/modules/ngx_http_deep_sched_module.so)
#   NGINX_TESTS_FILES          space-separated test file names (default: see 1.)
#   NGINX_TESTS_FILE_TIMEOUT   seconds per file     (default 300)
#   NGINX_TESTS_TIMEOUT        seconds for the run  (default 3600); files not
#                              started within it are reported "not run"
#   NGINX_TESTS_USER           user to run as when started as root (default nobody)
#   NGINX_TESTS_UNSAFE         TEST_NGINX_UNSAFE for the suite (default 1: runs
#                              the "long" fail_timeout/max_fails tests too; 0 skips them)
#   NGINX_TESTS_VERBOSE=1      print every file's prove output, not only failures
#   NGINX_TESTS_LEAVE=1        keep the temporary directory (its path is printed)
#   NGINX_TESTS_INJECT=0       baseline: run the same files unmodified (module
#                              loaded, no `deep_sched;`), to tell a failure of
#                              deep_sched from one of this nginx or machine
set -euo pipefail
caller_dir=$PWD
cd "$(dirname "$0")/.."

# Paths the caller gives are relative to its directory; the defaults are
# relative to the repository.
from_caller() { [[ "$1" == /* ]] && echo "$1" || echo "$caller_dir/$1"; }

if [[ -z "${NGINX_TESTS_DIR:-}" ]]; then
    echo "nginx-tests.sh: skipped: NGINX_TESTS_DIR not set (nginx's Perl test suite is not in any package registry;"
    echo "  git clone https://github.com/nginx/nginx-tests and run NGINX_TESTS_DIR=/path/to/nginx-tests scripts/nginx-tests.sh)"
    exit 0
fi

tests_dir=$(cd "$(from_caller "$NGINX_TESTS_DIR")" && pwd)
nginx_bin=build/sbin/nginx
[[ -n "${NGINX_BINARY:-}" ]] && nginx_bin=$(from_caller "$NGINX_BINARY")
module_so=build/modules/ngx_http_deep_sched_module.so
[[ -n "${MODULE_SO:-}" ]] && module_so=$(from_caller "$MODULE_SO")
file_timeout=${NGINX_TESTS_FILE_TIMEOUT:-300}
run_timeout=${NGINX_TESTS_TIMEOUT:-3600}
run_user=${NGINX_TESTS_USER:-nobody}
unsafe=${NGINX_TESTS_UNSAFE:-1}
[[ $unsafe == 0 ]] && unsafe=""

[[ -f "$tests_dir/lib/Test/Nginx.pm" ]] || { echo "nginx-tests.sh: $tests_dir is not an nginx-tests checkout (no lib/Test/Nginx.pm)" >&2; exit 2; }
[[ -x "$nginx_bin" ]] || { echo "nginx-tests.sh: no nginx at $nginx_bin (scripts/build.sh, or set NGINX_BINARY)" >&2; exit 2; }
[[ -f "$module_so" ]] || { echo "nginx-tests.sh: no module at $module_so (scripts/build.sh, or set MODULE_SO)" >&2; exit 2; }

# --- dependencies (Debian) ----------------------------------------------------
perl_mods=(IO::Socket::SSL Net::SSLeay Cache::Memcached Cache::Memcached::Fast FCGI SCGI)
missing=0
for m in "${perl_mods[@]}"; do perl -M"$m" -e1 2>/dev/null || missing=1; done
command -v memcached >/dev/null || missing=1
command -v prove >/dev/null || missing=1
if [[ $missing == 1 ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "nginx-tests.sh: installing the suite's Perl dependencies with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq perl libio-socket-ssl-perl \
            libnet-ssleay-perl libcache-memcached-perl libcache-memcached-fast-perl \
            libfcgi-perl libscgi-perl memcached >/dev/null
    else
        echo "nginx-tests.sh: warning: some Perl modules or memcached are missing; the tests that need them will skip" >&2
    fi
fi

# --- work directory, readable by the unprivileged user --------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/deep-sched-nginx-tests.XXXXXX")
pid=""
cleanup() {
    # the session of the test running when interrupted
    [[ -n "$pid" ]] && { kill -KILL -- "-$pid" 2>/dev/null || true; }
    if [[ "${NGINX_TESTS_LEAVE:-}" == 1 ]]; then
        echo "nginx-tests.sh: left $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
chmod 0755 "$work"
mkdir -p "$work/bin" "$work/t" "$work/out" "$work/tmp"
install -m 0755 "$nginx_bin" "$work/bin/nginx"
install -m 0644 "$module_so" "$work/bin/ngx_http_deep_sched_module.so"
cp -r "$tests_dir/lib" "$work/t/lib"
chmod -R a+rX "$work"
chmod 1777 "$work/tmp"    # the suite's own temporary directories go here

as_user=()
if [[ $(id -u) == 0 ]]; then
    as_user=(runuser -u "$run_user" --)
fi

# --- the files ----------------------------------------------------------------
if [[ -n "${NGINX_TESTS_FILES:-}" ]]; then
    read -r -a files <<<"$NGINX_TESTS_FILES"
else
    mapfile -t files < <(cd "$tests_dir" && grep -lE '^[[:space:]]*upstream[[:space:]]+[^[:space:]{]+[[:space:]]*\{' -- *.t \
        | grep -vE '^(stream|mail)_' | sort)
fi
[[ ${#files[@]} -gt 0 ]] || { echo "nginx-tests.sh: no test files" >&2; exit 2; }

# Rewrites one test file: `deep_sched;` first in each plain round-robin http
# upstream block. Prints "injected method resolve" counts.
cat >"$work/inject.pl" <<'PERL'
use strict;
use warnings;
my ($in, $out, $count_only) = @ARGV;
open(my $fh, '<', $in) or die "$in: $!\n";
my @lines = <$fh>;
close $fh;
my ($ctx, $injected, $method, $resolve) = ('', 0, 0, 0);
my @res;
for (my $i = 0; $i < @lines; $i++) {
    my $l = $lines[$i];
    $ctx = $1 if $l =~ /^\s*(http|stream|mail)\s*\{/;
    push @res, $l;
    next unless $ctx eq 'http' && $l =~ /^(\s*)upstream\s+[^\s{]+\s*\{\s*(#.*)?$/;
    my $indent = $1;
    my $j = $i + 1;
    $j++ while $j < @lines && $lines[$j] !~ /^\s*\}/;
    my @body = @lines[$i + 1 .. $j - 1];
    if (grep { /^\s*(hash|ip_hash|least_conn|least_time|random|ntlm|deep_sched)\b/ } @body) {
        $method++;
    } elsif (grep { /^\s*server\s.*(\bresolve\b|\bservice=)/ } @body) {
        $resolve++;
    } else {
        my ($inner) = map { /^(\s*)\S/ ? $1 : () } @body;
        $inner = "$indent    " unless defined $inner;
        push @res, "${inner}deep_sched;\n" unless $count_only;
        $injected++;
    }
}
open($fh, '>', $out) or die "$out: $!\n";
print $fh @res;
close $fh;
print "$injected $method $resolve\n";
PERL

# --- run ------------------------------------------------------------------------
count_only=""
if [[ "${NGINX_TESTS_INJECT:-1}" == 0 ]]; then
    count_only=1
    echo "nginx-tests.sh: NGINX_TESTS_INJECT=0: baseline, files run unmodified (\"inj\" counts the blocks that would be injected)"
fi
globals="load_module $work/bin/ngx_http_deep_sched_module.so;"
start=$SECONDS
n_pass=0 n_skip=0 n_fail=0 n_notrun=0 total_dslog=0
total_files=0 total_tests=0 total_failed=0 total_skipped=0 total_todo=0 bad=0
declare -a summary
printf 'nginx-tests.sh: %s, module %s, suite %s\n' \
    "$("$work/bin/nginx" -v 2>&1 | sed 's/^nginx version: //')" "$module_so" "$tests_dir"
for f in "${files[@]}"; do
    f=$(basename "$f")
    if [[ ! -f "$tests_dir/$f" ]]; then
        n_notrun=$((n_notrun + 1)) bad=1
        summary+=("$(printf '%-40s %s' "$f" 'MISSING from the suite')"); continue
    fi
    counts=$(perl "$work/inject.pl" "$tests_dir/$f" "$work/t/$f" "$count_only")
    read -r n_inj n_method n_resolve <<<"$counts"
    chmod 0644 "$work/t/$f"
    why=""
    (( n_method > 0 )) && why+=" $n_method other method"
    (( n_resolve > 0 )) && why+=" $n_resolve run-time resolution"
    echo "inject $f: $n_inj block(s) injected${why:+, left alone:$why}"
    if (( n_inj == 0 )); then
        n_notrun=$((n_notrun + 1))
        summary+=("$(printf '%-40s %3d  %s' "$f" 0 "not run: no plain round-robin http upstream (${why# })")")
        continue
    fi
    if (( SECONDS - start >= run_timeout )); then
        n_notrun=$((n_notrun + 1)) bad=1
        summary+=("$(printf '%-40s %3d  %s' "$f" "$n_inj" "NOT RUN: NGINX_TESTS_TIMEOUT=${run_timeout}s reached")"); continue
    fi
    t0=$SECONDS
    log="$work/out/$f.log"
    # A session of its own, so nothing the test starts outlives it.
    set +e
    (cd "$work/t" && exec setsid "${as_user[@]}" env HOME="$work/tmp" TMPDIR="$work/tmp" \
        TEST_NGINX_BINARY="$work/bin/nginx" TEST_NGINX_GLOBALS="$globals" TEST_NGINX_UNSAFE="$unsafe" TEST_NGINX_LEAVE=1 \
        timeout --foreground -k 10 "$file_timeout" prove -v -I lib "$f") >"$log" 2>&1 &
    pid=$!
    wait "$pid"
    rc=$?
    set -e
    kill -KILL -- "-$pid" 2>/dev/null || true
    pid=""
    secs=$((SECONDS - t0))
    # what nginx logged about deep_sched at warn or above (the suite itself
    # only fails on [alert]); the suite's directories are then removed
    ds_lines=$(cat "$work"/tmp/nginx-test-*/error.log 2>/dev/null \
        | grep -E '\[(emerg|alert|crit|error|warn)\].*deep_sched' || true)
    ds_count=$(grep -c . <<<"$ds_lines" || true)
    rm -rf "${work:?}"/tmp/*
    tests=$(grep -cE '^(not )?ok [0-9]+' "$log" || true)
    failed=$(grep -E '^not ok [0-9]+' "$log" | grep -cv '# TODO' || true)
    todo=$(grep -cE '^(not )?ok [0-9]+.*# TODO' "$log" || true)
    skipped=$(grep -ciE '^ok [0-9]+.*# skip' "$log" || true)
    if (( rc == 124 || rc == 137 )); then
        result="TIMEOUT after ${file_timeout}s"
    elif grep -q '^Result: PASS' "$log" && (( rc == 0 )); then
        result=PASS
    elif grep -q '^Result: NOTESTS' "$log" && (( rc == 0 )); then
        # the whole file skipped itself: a module this nginx lacks, a daemon
        # not installed (uwsgi), ...
        reason=$(grep -oE ' skipped: .*' "$log" | head -n1 | sed 's/^ skipped: //' || true)
        result="SKIPPED (${reason:-no reason given})"
    else
        result=FAIL
    fi
    case $result in
        PASS) n_pass=$((n_pass + 1)) ;;
        SKIPPED*) n_skip=$((n_skip + 1)) ;;
        *) n_fail=$((n_fail + 1)) bad=1 ;;
    esac
    summary+=("$(printf '%-40s %3d %6d %6d %6d %6d %5ds  %s' "$f" "$n_inj" "$tests" "$failed" "$skipped" "$todo" "$secs" "$result")")
    total_files=$((total_files + 1)) total_tests=$((total_tests + tests)) total_failed=$((total_failed + failed))
    total_skipped=$((total_skipped + skipped)) total_todo=$((total_todo + todo))
    if (( ds_count > 0 )); then
        echo "$f: $ds_count line(s) about deep_sched at warn or above in nginx's error log, e.g.:"
        head -n 5 <<<"$ds_lines" | sed 's/^/    /'
        total_dslog=$((total_dslog + ds_count))
    fi
    if [[ $result == FAIL || $result == TIMEOUT* || "${NGINX_TESTS_VERBOSE:-}" == 1 ]]; then
        echo "---- $f ($result) ----"
        grep -vE '^ok [0-9]+' "$log" || true
        echo "----"
    fi
done

echo
printf '%-40s %3s %6s %6s %6s %6s %6s  %s\n' file inj tests failed skip todo time result
printf '%s\n' "${summary[@]}"
printf '%-40s %3s %6d %6d %6d %6d %5ds  %s (%d passed, %d skipped themselves, %d failed; %d not run)\n' \
    "TOTAL ($total_files files run)" "" "$total_tests" "$total_failed" "$total_skipped" "$total_todo" \
    "$((SECONDS - start))" "$([[ $bad == 0 ]] && echo PASS || echo FAIL)" \
    "$n_pass" "$n_skip" "$n_fail" "$n_notrun"
echo "error-log lines about deep_sched at warn or above: $total_dslog"
exit "$bad"
