//! The held-out judgement end to end on ONE tuning seed with tiny
//! durations: `deep-sched-lab heldout` explores, learns, runs every
//! balancer interleaved and writes its files; the test checks the files
//! and recomputes the excess and the targets from the raw runs.
//!
//! nginx, module and learner: `LEAST_TIME_NGINX` and `LEAST_TIME_MODULE`
//! when both are set (then `least_time` runs too), else `build/sbin/nginx`,
//! `build/modules/ngx_http_deep_sched_module.so` and
//! `target/release/deep-sched` (scripts/build.sh). Without them the test
//! says so and passes, except under CI (`CI` set).

use std::path::{Path, PathBuf};
use std::process::Command;

use deep_sched_lab::heldout::{
    excess_ratio, read_results, seed_stats, seed_verdict, targets, BLIND_BUILTINS, EQUAL_P2C,
    EXCESS_FLOOR, LEARNED_P2C, LEARNED_WRR,
};
use deep_sched_lab::nginx::ONE_POOL;

/// A tuning seed (lab/seeds/tuning.txt): never a held-out one.
const SEED: u64 = 1;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (nginx, module, learner, least_time)
fn tools() -> Option<(PathBuf, PathBuf, PathBuf, bool)> {
    let root = root();
    let learner = root.join("target/release/deep-sched");
    let found = match (
        std::env::var_os("LEAST_TIME_NGINX"),
        std::env::var_os("LEAST_TIME_MODULE"),
    ) {
        (Some(n), Some(m)) => (PathBuf::from(n), PathBuf::from(m), true),
        _ => (
            root.join("build/sbin/nginx"),
            root.join("build/modules/ngx_http_deep_sched_module.so"),
            false,
        ),
    };
    if found.0.is_file() && found.1.is_file() && learner.is_file() {
        return Some((found.0, found.1, learner, found.2));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no nginx, module or learner: run scripts/build.sh"
    );
    eprintln!("no nginx/module/learner: skipping the held-out loop");
    None
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn lab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deep-sched-lab"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_whole_loop_on_one_tuning_seed_writes_its_files_and_judges_them() {
    let Some((nginx, module, learner, least_time)) = tools() else {
        return;
    };
    let dir = Dir(std::env::temp_dir().join(format!("lab-heldout-e2e-{}", std::process::id())));
    let results = dir.0.join("results");
    let mut cmd = lab();
    cmd.args(["heldout", "--seeds", "tuning", "--first", "1"])
        // 20 one-second intervals x 4 peers: past the per-peer learner's
        // 60-row minimum.
        .args(["--duration", "1s", "--reps", "3", "--explore", "20s"])
        .arg("--nginx")
        .arg(&nginx)
        .arg("--module")
        .arg(&module)
        .arg("--learner")
        .arg(&learner)
        .arg("--results")
        .arg(&results)
        .arg("--work-dir")
        .arg(dir.0.join("work"))
        .args(["--worker-processes", "1", "--command", "e2e-command"]);
    if least_time {
        cmd.arg("--least-time");
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // the first tuning seed
    let first: u64 = read(&root().join("lab/seeds/tuning.txt"))
        .lines()
        .find_map(|l| l.split('#').next()?.trim().parse().ok())
        .unwrap();
    assert_eq!(first, SEED, "the test's seed is the first tuning seed");

    // the files
    for f in [
        format!("G{SEED}.json"),
        "heldout.md".into(),
        "section.md".into(),
        format!("G{SEED}/learn.txt"),
        format!("G{SEED}/policy.json"),
    ] {
        assert!(results.join(&f).is_file(), "{f} missing; {stderr}");
    }
    let all = read_results(&results).unwrap();
    assert_eq!(all.len(), 1);
    let r = &all[0];
    assert_eq!(
        (r.seed, r.reps, r.duration_s, r.explore_s),
        (SEED, 3, 1.0, 20.0)
    );
    assert!(r.learn_error.is_none(), "{:?}", r.learn_error);
    let mut want = vec![
        ONE_POOL,
        "round_robin",
        "least_conn",
        "least_conn_capacity",
        "random_two_least_conn",
        EQUAL_P2C,
        "deep_sched_oracle_p2c",
        LEARNED_P2C,
        LEARNED_WRR,
    ];
    if least_time {
        want.push("least_time");
    }
    for name in &want {
        let reps: Vec<usize> = r
            .runs
            .iter()
            .filter(|x| x.balancer == *name)
            .map(|x| x.rep)
            .collect();
        assert_eq!(reps, [0, 1, 2], "{name}");
    }
    assert_eq!(r.runs.len(), 3 * want.len());
    // interleaved: repetition by repetition, the order rotated
    let reps: Vec<usize> = r.runs.iter().map(|x| x.rep).collect();
    assert!(reps.windows(2).all(|w| w[0] <= w[1]), "{reps:?}");
    let firsts: Vec<&str> = r
        .runs
        .iter()
        .filter(|x| x.position == 0)
        .map(|x| x.balancer.as_str())
        .collect();
    assert_eq!(firsts.len(), 3);
    assert!(
        firsts[0] != firsts[1] && firsts[1] != firsts[2],
        "{firsts:?}"
    );
    for x in &r.runs {
        assert!(x.p99_ms > 0.0 && x.rps > 0.0, "{x:?}");
        let share: f64 = x.shares.iter().sum();
        assert!((share - 1.0).abs() < 1e-6, "{x:?}");
    }

    // the arithmetic, again from the raw runs
    let pool = |rep: usize| {
        r.runs
            .iter()
            .find(|x| x.balancer == ONE_POOL && x.rep == rep)
            .unwrap()
            .p99_ms
    };
    let median3 = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[1]
    };
    let excess = |name: &str| {
        median3(
            r.runs
                .iter()
                .filter(|x| x.balancer == name)
                .map(|x| x.p99_ms - pool(x.rep))
                .collect(),
        )
    };
    let p99 = |name: &str| {
        median3(
            r.runs
                .iter()
                .filter(|x| x.balancer == name)
                .map(|x| x.p99_ms)
                .collect(),
        )
    };
    let stats = seed_stats(&r.runs);
    for s in &stats {
        assert_eq!(s.excess_ms, excess(&s.balancer), "{}", s.balancer);
    }
    let v = seed_verdict(r.seed, &stats).unwrap();
    let builtins: Vec<&str> = BLIND_BUILTINS
        .iter()
        .copied()
        .filter(|b| want.contains(b))
        .collect();
    let best = builtins
        .iter()
        .copied()
        .min_by(|a, b| excess(a).total_cmp(&excess(b)))
        .unwrap();
    assert_eq!(v.best_builtin, best);
    let eps = EXCESS_FLOOR * p99(ONE_POOL);
    let over_best = excess_ratio(excess(LEARNED_P2C), excess(best), eps);
    assert_eq!(v.over_best, Some(over_best));
    assert_eq!(
        v.over_equal,
        Some(excess_ratio(excess(LEARNED_P2C), excess(EQUAL_P2C), eps))
    );
    assert_eq!(
        v.wrr_over_least_conn,
        Some(p99(LEARNED_WRR) / p99("least_conn"))
    );
    let best_p99 = builtins
        .iter()
        .map(|b| p99(b))
        .fold(f64::INFINITY, f64::min);
    assert_eq!(v.p99_over_best, Some(p99(LEARNED_P2C) / best_p99));
    // one seed: the median and the worst are that seed's value
    let t = targets(std::slice::from_ref(&v));
    assert_eq!(t[0].value, Some(over_best));
    assert_eq!(t[1].value, Some(over_best));
    assert_eq!(t[0].met(), over_best <= 0.5);

    // the reports say it
    let md = read(&results.join("heldout.md"));
    assert!(md.contains("Command: `e2e-command`"), "{md}");
    assert!(
        md.contains(&format!("| {over_best:.2} | 0.5 | 1 |")),
        "{md}"
    );
    let verdict = t[0].verdict();
    assert!(md.contains(&verdict), "{verdict}\n{md}");
    let section = read(&results.join("section.md"));
    assert!(section.starts_with("## held-out scenarios\n"));
    // committed files carry no paths of this machine
    for f in [
        format!("G{SEED}.json"),
        "heldout.md".into(),
        format!("G{SEED}/learn.txt"),
    ] {
        let text = read(&results.join(&f));
        assert!(!text.contains(&*dir.0.to_string_lossy()), "{f}: {text}");
    }

    // the report alone, again from the JSON
    std::fs::remove_file(results.join("heldout.md")).unwrap();
    let out = lab()
        .args(["heldout-report", "--command", "e2e-command"])
        .arg(&results)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&results.join("heldout.md")), md);
}

#[test]
fn bad_arguments_are_refused_by_name() {
    let cases: [(&[&str], &str); 5] = [
        (&["heldout", "--seeds", "1,1"], "appears twice"),
        (
            &["heldout", "--seeds", "/no/such/seeds"],
            "\"/no/such/seeds\"",
        ),
        (&["heldout", "--seeds", "3", "--first", "0"], "--first 0"),
        (
            &["heldout", "--seeds", "3", "--module", "/no/such.so"],
            "--module /no/such.so: no such file",
        ),
        (&["heldout-report", "/no/such/dir"], "/no/such/dir"),
    ];
    for (args, want) in cases {
        let out = lab().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    // least_time on an nginx older than 1.31
    let old = root().join("build/sbin/nginx");
    let version = Command::new(&old).arg("-v").output();
    if let Ok(v) = version {
        let text = String::from_utf8_lossy(&v.stderr).to_string();
        if deep_sched_lab::nginx::parse_version(&text)
            .is_some_and(|v| !deep_sched_lab::nginx::has_least_time(v))
        {
            let out = lab()
                .args(["heldout", "--seeds", "3", "--least-time", "--nginx"])
                .arg(&old)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success());
            assert!(
                stderr.contains("least_time needs nginx >= 1.31"),
                "{stderr}"
            );
        }
    }
}
