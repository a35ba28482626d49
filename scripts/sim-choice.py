#!/usr/bin/env python3
"""Queueing simulation of per-request peer choices (design aid, docs/lab.md).

Discrete-event model of the lab's scenarios without nginx: Poisson arrivals,
peers with `workers` servers and a FIFO queue each, exponential service of
10 ms (5x slower for peer 3 during S3's slow phases). Compares nginx-like
least_conn (fewest in flight) with deep_sched's `choose=p2c` (two different
peers drawn by weight; cost = peak-EWMA latency x (in flight + 1) / weight)
under given weights, and the old p2c (two independent draws, in flight per
weight). For S3, the weights of the slow state apply with a 1.5 s lag (the
decision interval plus detection), as they would in the module.

    scripts/sim-choice.py [requests per case, default 300000]

Prints p50 and p99 in ms per (scenario, choice). Pure Python, no packages.
"""
import heapq
import math
import random
import sys

SERVICE_MS = 10.0


def simulate(choose, caps, load, n, seed=2, slow=False, tau_ms=1000.0):
    rng = random.Random(seed)
    lam = load * sum(caps) / SERVICE_MS
    k = len(caps)
    busy, inflight = [0] * k, [0] * k
    queues = [[] for _ in caps]
    ewma, stamp = [0.0] * k, [0.0] * k
    events, lat = [], []
    t = 0.0

    def service(p, now):
        slow_now = slow and p == 2 and now % 15000 < 5000
        return rng.expovariate(1 / (SERVICE_MS * (5 if slow_now else 1)))

    for _ in range(n):
        t += rng.expovariate(lam)
        while events and events[0][0] <= t:
            end, p, arrival = heapq.heappop(events)
            x = end - arrival
            lat.append(x)
            inflight[p] -= 1
            if ewma[p] == 0 or x > ewma[p]:
                ewma[p] = x
            else:
                w = math.exp(-(end - stamp[p]) / tau_ms)
                ewma[p] = w * ewma[p] + (1 - w) * x
            stamp[p] = end
            if queues[p]:
                heapq.heappush(events, (end + service(p, end), p, queues[p].pop(0)))
            else:
                busy[p] -= 1
        lagged = t - 1500
        slow_state = slow and lagged > 0 and lagged % 15000 < 5000
        p = choose(inflight, ewma, slow_state, rng)
        inflight[p] += 1
        if busy[p] < caps[p]:
            busy[p] += 1
            heapq.heappush(events, (t + service(p, t), p, t))
        else:
            queues[p].append(t)
    lat.sort()
    return lat[len(lat) // 2], lat[int(0.99 * len(lat))]


def least_conn(inflight, ewma, slow_state, rng):
    best = min(inflight)
    return rng.choice([i for i, x in enumerate(inflight) if x == best])


def p2c(weights, slow_weights=None):
    def choose(inflight, ewma, slow_state, rng):
        w = slow_weights if slow_state and slow_weights else weights
        a = rng.choices(range(len(w)), weights=w)[0]
        rest = list(w)
        rest[a] = 0
        b = rng.choices(range(len(w)), weights=rest)[0]
        cost = [max(ewma[i], 1.0) * (inflight[i] + 1) / w[i] for i in (a, b)]
        return b if cost[1] < cost[0] else a
    return choose


def p2c_old(weights):
    def choose(inflight, ewma, slow_state, rng):
        a, b = rng.choices(range(len(weights)), weights=weights, k=2)
        return b if inflight[b] * weights[a] < inflight[a] * weights[b] else a
    return choose


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    cases = [
        ("S1 8/8/8, 70%", (8, 8, 8), 0.7, False, [
            ("least_conn", least_conn),
            ("p2c old 5,5,5", p2c_old((5, 5, 5))),
            ("p2c 5,5,5", p2c((5, 5, 5))),
        ]),
        ("S2 8/8/3, 70%", (8, 8, 3), 0.7, False, [
            ("least_conn", least_conn),
            ("p2c old 5,5,5", p2c_old((5, 5, 5))),
            ("p2c old 3,3,1", p2c_old((3, 3, 1))),
            ("p2c 5,5,5", p2c((5, 5, 5))),
            ("p2c 3,3,1", p2c((3, 3, 1))),
            ("p2c 5,5,1", p2c((5, 5, 1))),
        ]),
        ("S3 8/8/8 noisy, 55%", (8, 8, 8), 0.55, True, [
            ("least_conn", least_conn),
            ("p2c old 5,5,5", p2c_old((5, 5, 5))),
            ("p2c 5,5,5", p2c((5, 5, 5))),
            ("p2c 5,5,5 / slow 5,5,1", p2c((5, 5, 5), (5, 5, 1))),
        ]),
    ]
    print(f"{'scenario':<22} {'choice':<24} {'p50 ms':>7} {'p99 ms':>7}")
    for name, caps, load, slow, choices in cases:
        for label, choose in choices:
            p50, p99 = simulate(choose, caps, load, n, slow=slow)
            print(f"{name:<22} {label:<24} {p50:7.1f} {p99:7.1f}", flush=True)


if __name__ == "__main__":
    main()
