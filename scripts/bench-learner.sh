#!/usr/bin/env bash
# GMM fitting: the learner's EM (crates/learn, example gmm_fit) against
# scikit-learn's GaussianMixture on the same data and settings (K=27, full
# covariance, tol 1e-3, max_iter 100, reg_covar 1e-6, k-means init, one
# initialisation). Writes the "learner" section of BENCHMARKS.md.
#
#   scripts/bench-learner.sh [ROUNDS=5]
#
# Environment: BENCH_SKLEARN_1M=1 also fits scikit-learn on 1,000,000 rows
# (minutes); BENCH_N_LARGE overrides 1,000,000 (for a quick try).
#
# Data: a 27-component mixture in 27 dimensions (3 request types x 9 load
# levels, like the research's 27 states), random means and correlated
# covariances, unequal weights, standardised per column as the learner
# standardises its features. Made by numpy from a fixed seed.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
n_large=${BENCH_N_LARGE:-1000000}
work=target/bench-learner
venv=$work/venv
mkdir -p "$work"

if [[ ! -x $venv/bin/python ]]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import sklearn, numpy' 2>/dev/null; then
    "$venv/bin/pip" install --quiet 'scikit-learn>=1.3' 'numpy>=1.24'
fi
py=$venv/bin/python

"$py" - "$work" "$n_large" <<'PY'
import sys, numpy as np
work, n_large = sys.argv[1], int(sys.argv[2])
def make(n, seed, k=27, d=27):
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 3.0, size=(k, d))
    chols = []
    for _ in range(k):
        a = rng.normal(size=(d, d)) / np.sqrt(d)
        cov = a @ a.T * rng.uniform(0.2, 1.5) + 0.05 * np.eye(d)
        chols.append(np.linalg.cholesky(cov))
    w = rng.dirichlet(np.full(k, 5.0))
    labels = rng.choice(k, size=n, p=w)
    x = np.empty((n, d))
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        x[idx] = means[c] + rng.normal(size=(idx.size, d)) @ chols[c].T
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x
for name, n in (("small", 7000), ("large", n_large)):
    make(n, 42 if name == "small" else 43).astype("<f8").tofile(f"{work}/{name}.f64")
PY

cat > "$work/sk_fit.py" <<'PY'
import json, sys, time, numpy as np
from sklearn.mixture import GaussianMixture
path, d, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
x = np.fromfile(path, dtype="<f8").reshape(-1, d)
gm = GaussianMixture(n_components=k, covariance_type="full", tol=1e-3, max_iter=100,
                     reg_covar=1e-6, init_params="kmeans", n_init=1, random_state=0)
t = time.perf_counter()
gm.fit(x)
secs = time.perf_counter() - t
print(json.dumps({"n": x.shape[0], "fit_seconds": secs, "iterations": int(gm.n_iter_),
                  "converged": bool(gm.converged_), "mean_log_likelihood": float(gm.score(x))}))
PY

cargo build --release -q -p deep-sched-learn --example gmm_fit --bin deep-sched
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
ours=target/release/examples/gmm_fit

: > "$work/small.jsonl"
for r in $(seq "$rounds"); do
    # Interleaved, so both see the same neighbours on the shared machine.
    echo "{\"who\":\"ours\",\"r\":$(${ours} "$work/small.f64" 27 27 full 1e-3 100 "$r")}" >> "$work/small.jsonl"
    echo "{\"who\":\"sklearn\",\"r\":$("$py" "$work/sk_fit.py" "$work/small.f64" 27 27)}" >> "$work/small.jsonl"
done

/usr/bin/time -v "$ours" "$work/large.f64" 27 27 full 1e-3 100 1 > "$work/large-ours.json" 2> "$work/large-ours.time"
# The whole pipeline (read, features, GMM K=27, MDP, value iteration) on a
# synthetic sample log in the module's format.
n_e2e=${BENCH_N_E2E:-200000}
target/release/deep-sched synth --out "$work/e2e.jsonl" --records "$n_e2e" --seed 5
/usr/bin/time -v target/release/deep-sched learn --kind table --samples "$work/e2e.jsonl" --out "$work/e2e-policy.json" \
    --seed 1 --created 2026-01-01T00:00:00Z > "$work/e2e.out" 2> "$work/e2e.time"
if [[ ${BENCH_SKLEARN_1M:-0} == 1 ]]; then
    /usr/bin/time -v "$py" "$work/sk_fit.py" "$work/large.f64" 27 27 > "$work/large-sk.json" 2> "$work/large-sk.time"
else
    rm -f "$work/large-sk.json" "$work/large-sk.time"
fi

load=$(cut -d' ' -f1-3 /proc/loadavg)
section=$("$py" - "$work" "$rounds" "$n_large" "$(nproc)" "$(date -u +%Y-%m-%d)" "${BENCH_SKLEARN_1M:-0}" "$("$py" -c 'import sklearn; print(sklearn.__version__)')" "$load_before" "$load" <<'PY'
import json, os, re, statistics as st, sys
work, rounds, n_large, cores, day, sk1m, skver, load0, load1 = sys.argv[1:10]
runs = [json.loads(l) for l in open(f"{work}/small.jsonl")]
def col(who, key):
    return [r["r"][key] for r in runs if r["who"] == who]
def rss(path):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(path).read())
    return int(m.group(1)) / 1024
ours_t, sk_t = col("ours", "fit_seconds"), col("sklearn", "fit_seconds")
ours_ll, sk_ll = col("ours", "mean_log_likelihood"), col("sklearn", "mean_log_likelihood")
ratios = [s / o for o, s in zip(ours_t, sk_t)]
gap = [(s - o) / abs(s) * 100 for o, s in zip(ours_ll, sk_ll)]
f = lambda xs, p=3: f"{st.median(xs):.{p}f} ({min(xs):.{p}f}–{max(xs):.{p}f})"
out = []
out.append("## learner\n")
out.append(f"Command: `scripts/bench-learner.sh {rounds}` ({day}, {cores} cores, shared machine; "
           f"scikit-learn {skver}; load average {load0} before, {load1} after: other builds were running). GMM fit, K=27, full covariance, tol 1e-3, max_iter 100, reg_covar 1e-6, "
           "k-means init, one initialisation; time of the fit call including its initialisation, "
           "data already in memory. Data: a 27-component mixture in 27 dimensions, standardised "
           "(see the script). Median (min–max) over the rounds, ours and scikit-learn interleaved; "
           "our seed changes per round.\n")
out.append("| 7,000 x 27 | fit seconds | iterations | mean log-likelihood |")
out.append("| --- | ---: | ---: | ---: |")
out.append(f"| deep-sched (`em::fit`) | {f(ours_t)} | {f(col('ours','iterations'),0)} | {f(ours_ll)} |")
out.append(f"| scikit-learn GaussianMixture | {f(sk_t)} | {f(col('sklearn','iterations'),0)} | {f(sk_ll)} |")
out.append("")
out.append(f"Speed-up (scikit-learn time / ours, per round): median **{st.median(ratios):.1f}x** "
           f"(min {min(ratios):.1f}x, max {max(ratios):.1f}x); target ≥ 5x.")
out.append(f"Mean log-likelihood, ours below scikit-learn's by (per round, % of |scikit-learn's|): "
           f"median {st.median(gap):.2f}% (min {min(gap):.2f}%, max {max(gap):.2f}%); target ≤ 0.5% "
           "(negative: ours is higher).\n")
lo = json.load(open(f"{work}/large-ours.json"))
line = (f"{int(n_large):,} x 27, one run: deep-sched {lo['fit_seconds']:.1f} s, {lo['iterations']} iterations, "
        f"mean log-likelihood {lo['mean_log_likelihood']:.3f}, peak RSS {rss(work + '/large-ours.time'):.0f} MB "
        f"(`/usr/bin/time -v`; the {int(n_large) * 27 * 8 / 2**20:.0f} MB matrix itself is most of it); target < 60 s.")
if sk1m == "1" and os.path.exists(f"{work}/large-sk.json"):
    ls = json.load(open(f"{work}/large-sk.json"))
    line += (f" scikit-learn: {ls['fit_seconds']:.1f} s, {ls['iterations']} iterations, mean log-likelihood "
             f"{ls['mean_log_likelihood']:.3f}, peak RSS {rss(work + '/large-sk.time'):.0f} MB.")
else:
    line += " (scikit-learn not run on it: `BENCH_SKLEARN_1M=1`.)"
out.append(line)
e2e = open(f"{work}/e2e.out").read()
n_e2e = re.search(r"intervals: (\d+) read", e2e).group(1)
dims = re.search(r"GMM: (K=\d+) \w+, (D=\d+)", e2e)
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", open(f"{work}/e2e.time").read()).group(1)
out.append("")
out.append(f"Whole pipeline, `deep-sched learn` on {int(n_e2e):,} synthetic intervals in the module's sample format "
           f"(`deep-sched synth`, 1 upstream x 3 peers, {dims.group(1)}, {dims.group(2)}, value iteration): "
           f"{wall} wall clock, peak RSS {rss(work + '/e2e.time'):.0f} MB.")
print("\n".join(out))
PY
)
scripts/bench-section.sh "learner" "$section"
echo "$section"
