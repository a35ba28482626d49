//! Off-policy estimates on a synthetic contextual bandit whose values are
//! known, and the safe decision rule built on them.

use deep_sched_learn::ope::{decide_state, estimate, Estimator, Logged, OpeOptions, Rule, Why};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Contexts uniform; mean reward `mu[x][a]`; Gaussian noise of sd `noise`;
/// logging probabilities `log[x][a]`.
struct Bandit {
    mu: Vec<Vec<f64>>,
    log: Vec<Vec<f64>>,
    noise: f64,
}

impl Bandit {
    fn random(contexts: usize, actions: usize, seed: u64) -> Bandit {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mu = (0..contexts)
            .map(|_| (0..actions).map(|_| rng.gen_range(0.0..1.0)).collect())
            .collect();
        let log = (0..contexts)
            .map(|_| {
                let w: Vec<f64> = (0..actions).map(|_| rng.gen_range(0.2..1.0)).collect();
                let t: f64 = w.iter().sum();
                w.into_iter().map(|x| x / t).collect()
            })
            .collect();
        Bandit {
            mu,
            log,
            noise: 0.5,
        }
    }

    fn sample(&self, n: usize, rng: &mut ChaCha8Rng) -> Vec<Logged> {
        (0..n)
            .map(|_| {
                let x = rng.gen_range(0..self.mu.len());
                let u: f64 = rng.gen();
                let mut acc = 0.0;
                let mut a = self.log[x].len() - 1;
                for (i, p) in self.log[x].iter().enumerate() {
                    acc += p;
                    if u < acc {
                        a = i;
                        break;
                    }
                }
                let g: f64 = rand_distr::Distribution::sample(&rand_distr::StandardNormal, rng);
                Logged {
                    context: x,
                    action: a,
                    propensity: self.log[x][a],
                    reward: self.mu[x][a] + self.noise * g,
                }
            })
            .collect()
    }

    /// True value of a policy `pi(x, a)`.
    fn value(&self, pi: &dyn Fn(usize, usize) -> f64) -> f64 {
        let k = self.mu.len() as f64;
        self.mu
            .iter()
            .enumerate()
            .map(|(x, row)| {
                row.iter()
                    .enumerate()
                    .map(|(a, m)| pi(x, a) * m)
                    .sum::<f64>()
                    / k
            })
            .sum()
    }
}

/// Over many seeds: how often the interval covers the truth, and the mean
/// error with its standard error.
fn coverage(estimator: Estimator, n: usize, seeds: u64) -> (f64, f64, f64) {
    let bandit = Bandit::random(5, 3, 99);
    // target: a deterministic policy and a stochastic one, alternately
    let det = |x: usize, a: usize| if a == (x + 1) % 3 { 1.0 } else { 0.0 };
    let sto = |_: usize, a: usize| [0.2, 0.3, 0.5][a];
    let (mut covered, mut errs) = (0usize, Vec::new());
    for seed in 0..seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + seed);
        let data = bandit.sample(n, &mut rng);
        let pi: &dyn Fn(usize, usize) -> f64 = if seed % 2 == 0 { &det } else { &sto };
        let truth = bandit.value(pi);
        let e = estimate(&data, pi, 3, estimator, &OpeOptions::default()).unwrap();
        covered += usize::from(e.low <= truth && truth <= e.high);
        errs.push(e.value - truth);
    }
    let m = errs.iter().sum::<f64>() / errs.len() as f64;
    let sd = (errs.iter().map(|e| (e - m).powi(2)).sum::<f64>() / (errs.len() as f64 - 1.0)).sqrt();
    (
        covered as f64 / seeds as f64,
        m,
        sd / (errs.len() as f64).sqrt(),
    )
}

#[test]
fn doubly_robust_is_unbiased_and_its_95_interval_covers_about_95_percent() {
    // 400 runs: the coverage's binomial sd is 1.1 points
    let (cov, bias, se) = coverage(Estimator::DoublyRobust, 1000, 400);
    eprintln!("DR: coverage {cov:.3}, mean error {bias:+.5} (se {se:.5})");
    assert!((0.92..=0.98).contains(&cov), "coverage {cov}");
    assert!(bias.abs() < 3.0 * se, "bias {bias} vs se {se}");
}

#[test]
fn ips_is_unbiased_and_covers_too_but_wider_than_dr() {
    let (cov, bias, se) = coverage(Estimator::Ips, 1000, 400);
    eprintln!("IPS: coverage {cov:.3}, mean error {bias:+.5} (se {se:.5})");
    assert!((0.92..=0.98).contains(&cov), "coverage {cov}");
    assert!(bias.abs() < 3.0 * se, "bias {bias} vs se {se}");
    // DR's model removes most of the reward variance: narrower intervals
    let bandit = Bandit::random(5, 3, 99);
    let data = bandit.sample(2000, &mut ChaCha8Rng::seed_from_u64(5));
    let det = |x: usize, a: usize| if a == x % 3 { 1.0 } else { 0.0 };
    let o = OpeOptions::default();
    let ips = estimate(&data, &det, 3, Estimator::Ips, &o).unwrap();
    let dr = estimate(&data, &det, 3, Estimator::DoublyRobust, &o).unwrap();
    assert!(dr.std_err < ips.std_err, "DR {dr} vs IPS {ips}");
}

#[test]
fn the_direct_method_converges_to_the_truth() {
    let bandit = Bandit::random(5, 3, 7);
    let data = bandit.sample(50_000, &mut ChaCha8Rng::seed_from_u64(8));
    let det = |x: usize, a: usize| if a == (x + 2) % 3 { 1.0 } else { 0.0 };
    let e = estimate(
        &data,
        &det,
        3,
        Estimator::DirectMethod,
        &OpeOptions::default(),
    )
    .unwrap();
    assert!((e.value - bandit.value(&det)).abs() < 0.01, "{e}");
}

/// One state, baseline action 0 of mean 0.5, candidate 1 of mean
/// `0.5 + gap`, both logged with probability 1/2, noise sd 0.5.
fn one_state(gap: f64) -> Bandit {
    Bandit {
        mu: vec![vec![0.5, 0.5 + gap]],
        log: vec![vec![0.5, 0.5]],
        noise: 0.5,
    }
}

#[test]
fn a_clear_gain_with_enough_data_changes_the_action() {
    let data = one_state(0.3).sample(2000, &mut ChaCha8Rng::seed_from_u64(1));
    let d = decide_state(
        &data,
        0,
        0,
        &[1],
        2,
        Rule::default(),
        &OpeOptions::default(),
    )
    .unwrap();
    assert_eq!(
        (d.action, d.changed, &d.why),
        (1, true, &Why::Confident),
        "{d:?}"
    );
    let (c, ce) = d.candidate.unwrap();
    assert_eq!(c, 1);
    assert!(ce.low > d.baseline.unwrap().high);
}

#[test]
fn a_worse_candidate_is_never_adopted() {
    let mut changed = 0;
    for seed in 0..200 {
        let data = one_state(-0.1).sample(300, &mut ChaCha8Rng::seed_from_u64(seed));
        let d = decide_state(
            &data,
            0,
            0,
            &[1],
            2,
            Rule::default(),
            &OpeOptions::default(),
        )
        .unwrap();
        changed += usize::from(d.changed);
        assert_eq!(d.action, 0);
    }
    assert_eq!(changed, 0);
}

#[test]
fn few_samples_keep_the_baseline_and_say_how_many_more_would_decide() {
    // a real gain of 0.15 (0.3 sd of the noise), seen in 40 samples
    let (mut kept, mut decided_later, mut trials) = (0, 0, 0);
    for seed in 0..100 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let bandit = one_state(0.15);
        let data = bandit.sample(40, &mut rng);
        let d = decide_state(
            &data,
            0,
            0,
            &[1],
            2,
            Rule::default(),
            &OpeOptions::default(),
        )
        .unwrap();
        assert!(!d.changed || d.why == Why::Confident);
        if d.changed {
            continue;
        }
        kept += 1;
        assert_eq!(d.action, 0);
        if let Why::NotConfident { more_samples } = d.why {
            assert!(more_samples > 0);
            assert!(d
                .why
                .to_string()
                .contains(&format!("about {more_samples} more samples")));
            // collect that many more and decide again
            let mut more = data.clone();
            more.extend(bandit.sample(more_samples, &mut rng));
            let again = decide_state(
                &more,
                0,
                0,
                &[1],
                2,
                Rule::default(),
                &OpeOptions::default(),
            )
            .unwrap();
            trials += 1;
            decided_later += usize::from(again.changed);
        }
    }
    eprintln!(
        "kept {kept}/100 at 40 samples; decided after the suggested more: {decided_later}/{trials}"
    );
    assert!(kept >= 90, "kept {kept}");
    // the calculation aims at 80% power from a noisy gap: rough, but most
    // runs decide once the suggested samples are in
    assert!(trials >= 30, "{trials} runs saw the gain at all");
    assert!(
        decided_later as f64 >= 0.5 * trials as f64,
        "{decided_later}/{trials}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Whatever the data, the rule never picks an action whose estimate is
    /// below the baseline's, and changes only past the baseline's upper
    /// bound with enough support.
    #[test]
    fn the_rule_never_picks_a_candidate_ranked_below_the_baseline(
        seed in any::<u64>(),
        n in 1usize..400,
        actions in 2usize..5,
        baseline in 0usize..5,
        rule in prop_oneof![Just(Rule::BeatUpperBound), Just(Rule::BeatEstimate)],
    ) {
        let baseline = baseline % actions;
        let bandit = Bandit::random(2, actions, seed);
        let data = bandit.sample(n, &mut ChaCha8Rng::seed_from_u64(seed ^ 1));
        let candidates: Vec<usize> = (0..actions).collect();
        let o = OpeOptions::default();
        for state in 0..2 {
            let d = decide_state(&data, state, baseline, &candidates, actions, rule, &o).unwrap();
            if d.changed {
                let base = d.baseline.unwrap();
                let (c, ce) = d.candidate.unwrap();
                prop_assert_eq!(d.action, c);
                prop_assert_ne!(c, baseline);
                prop_assert!(ce.value > base.value, "{} vs {}", ce, base);
                let bar = match rule { Rule::BeatUpperBound => base.high, Rule::BeatEstimate => base.value };
                prop_assert!(ce.low > bar);
                let support = data.iter().filter(|s| s.context == state && s.action == c).count();
                prop_assert!(support >= o.min_support);
                prop_assert_eq!(&d.why, &Why::Confident);
            } else {
                prop_assert_eq!(d.action, baseline);
            }
        }
    }
}
