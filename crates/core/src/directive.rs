//! The arguments of the `deep_sched` directive, parsed without nginx.
//!
//! ```nginx
//! deep_sched;                                   # observe only
//! deep_sched explore weights=1,3,5 interval=2s log=logs/x.jsonl;
//! deep_sched explore spread=0.5 log=logs/x.jsonl;  # log-normal around weight=
//! deep_sched policies/social.json epsilon=0.05 choose=p2c slow_start=30s;
//! deep_sched choose=hash key=$request_uri balance=1.5;
//! ```
//!
//! The nginx glue hands over the directive's words (without the directive
//! name); everything else — which forms exist, which parameter goes with
//! which form, the ranges — is decided here so it can be tested directly.

pub use crate::hash::Balance;
use crate::hash::MAX_BALANCE_PERMILLE;

/// Shortest and longest decision interval the module accepts.
pub const INTERVAL_RANGE_MS: (u64, u64) = (100, 3_600_000);
/// Largest weight a peer can be given (nginx's own `weight=` has no upper
/// bound, but a smooth round robin over huge weights only wastes precision).
pub const MAX_WEIGHT: u32 = 1000;
/// The research's exploration set.
pub const DEFAULT_EXPLORE_WEIGHTS: [u32; 3] = [1, 3, 5];
/// Largest `spread=` (σ of `ln w`): beyond it a draw spans more than the
/// weights' 1..=1000 range.
pub const MAX_SPREAD: f64 = 3.0;
/// Default decision interval when neither the directive nor the policy sets one.
pub const DEFAULT_INTERVAL_MS: u64 = 2000;
/// Longest `slow_start=` ramp (Envoy caps nothing; an hour is far beyond any
/// warm-up and keeps the arithmetic in range).
pub const MAX_SLOW_START_MS: u64 = 3_600_000;

/// What the agent does every interval.
#[derive(Debug, Clone, PartialEq)]
pub enum ModeArg {
    /// `deep_sched;` — weighted round robin by the configured weights, counters only.
    Observe,
    /// `deep_sched explore;` — a random weight per peer from `weights=` every interval.
    Explore,
    /// `deep_sched FILE;` — weights from the policy's table.
    Policy(String),
}

/// How each request picks among the peers, given the current weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChooseArg {
    /// nginx's smooth weighted round robin.
    #[default]
    Wrr,
    /// Power of two choices: two draws by weight, the less loaded wins.
    P2c,
    /// Consistent hashing of `key=` with bounded loads ([`crate::hash`]).
    Hash,
}

impl ChooseArg {
    /// The word of `choose=` (`wrr`, `p2c`, `hash`), as the sample log records it.
    pub fn name(self) -> &'static str {
        match self {
            ChooseArg::Wrr => "wrr",
            ChooseArg::P2c => "p2c",
            ChooseArg::Hash => "hash",
        }
    }
}

/// The parsed `deep_sched` directive.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectiveArgs {
    /// Observe, explore or policy.
    pub mode: ModeArg,
    /// `interval=`; `None` means the policy's interval, or [`DEFAULT_INTERVAL_MS`].
    pub interval_ms: Option<u64>,
    /// `choose=`; without it, `p2c` with a policy file and `wrr` otherwise
    /// (observe-only stays exact round robin; a policy's weights under a
    /// smooth round robin overload a peer whenever the table is off, p2c
    /// corrects per request).
    pub choose: ChooseArg,
    /// `choose=` was written (a policy learned under p2c and served under
    /// an explicit `choose=wrr` earns a warning at `nginx -t`).
    pub choose_given: bool,
    /// `log=`: where to append one JSON line per decision.
    pub log: Option<String>,
    /// `weights=`: the exploration set (only with `explore`).
    pub weights: Vec<u32>,
    /// `epsilon=`: probability of an exploratory action (only with a policy).
    pub epsilon: f64,
    /// `spread=`: σ of the log-normal noise on `ln w` — with `explore`,
    /// around the configured weights instead of uniform draws from
    /// `weights=`; with a policy, what `epsilon=` perturbs the policy's
    /// weights by (a table policy without it takes a uniformly random
    /// action).
    pub spread: Option<f64>,
    /// `slow_start=`: ramp of a peer that returns from failure, ms (0: off;
    /// not with observe-only, which stays exact round robin).
    pub slow_start_ms: u64,
    /// `key=`: the hashed key of `choose=hash`, an nginx complex value as
    /// written (required with it, refused without it).
    pub key: Option<String>,
    /// `balance=`: the load bound of `choose=hash` (default 1.25).
    pub balance: Balance,
}

/// A problem with the directive's words; displayed the way nginx phrases
/// configuration errors (`invalid parameter "x" in "deep_sched": ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid parameter \"{word}\" in \"deep_sched\": {problem}")]
pub struct DirectiveError {
    /// The offending word as written.
    pub word: String,
    /// What is wrong with it.
    pub problem: String,
}

fn err(word: &str, problem: impl Into<String>) -> DirectiveError {
    DirectiveError {
        word: word.to_owned(),
        problem: problem.into(),
    }
}

/// Parses an nginx time value: a number followed by `ms`, `s`, `m` or `h`
/// (no unit means seconds, as in nginx). Returns milliseconds.
pub fn parse_time_ms(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Parses a decision interval (`interval=` of the directive): an nginx time
/// value within [`INTERVAL_RANGE_MS`]. Returns milliseconds, or what is
/// wrong with it.
pub fn parse_interval_ms(text: &str) -> Result<u64, &'static str> {
    let ms = parse_time_ms(text).ok_or("expected a time such as 500ms, 2s or 1m")?;
    let (lo, hi) = INTERVAL_RANGE_MS;
    if !(lo..=hi).contains(&ms) {
        return Err("the interval must be between 100ms and 1h");
    }
    Ok(ms)
}

/// Parses the words after `deep_sched`.
pub fn parse(words: &[&str]) -> Result<DirectiveArgs, DirectiveError> {
    let mut rest = words;
    let mode = match words.first() {
        None => ModeArg::Observe,
        Some(w) if w.contains('=') => ModeArg::Observe,
        Some(&"explore") => {
            rest = &words[1..];
            ModeArg::Explore
        }
        Some(w) if w.is_empty() => return Err(err(w, "the policy file name is empty")),
        Some(w) => {
            rest = &words[1..];
            ModeArg::Policy((*w).to_owned())
        }
    };

    let mut args = DirectiveArgs {
        mode,
        interval_ms: None,
        choose: ChooseArg::default(),
        choose_given: false,
        log: None,
        weights: DEFAULT_EXPLORE_WEIGHTS.to_vec(),
        epsilon: 0.0,
        spread: None,
        slow_start_ms: 0,
        key: None,
        balance: Balance::default(),
    };
    let mut seen: Vec<&str> = Vec::new();

    for &word in rest {
        let Some((key, value)) = word.split_once('=') else {
            return Err(err(
                word,
                "expected KEY=VALUE (interval=, choose=, log=, weights=, spread=, epsilon=, slow_start=)",
            ));
        };
        if seen.contains(&key) {
            return Err(err(word, format!("\"{key}=\" is given twice")));
        }
        seen.push(key);
        match key {
            "interval" => {
                args.interval_ms = Some(parse_interval_ms(value).map_err(|e| err(word, e))?);
            }
            "choose" => {
                args.choose = match value {
                    "wrr" => ChooseArg::Wrr,
                    "p2c" => ChooseArg::P2c,
                    "hash" => ChooseArg::Hash,
                    _ => return Err(err(word, "expected \"wrr\", \"p2c\" or \"hash\"")),
                };
                args.choose_given = true;
            }
            "log" => {
                if value.is_empty() {
                    return Err(err(word, "the log file name is empty"));
                }
                args.log = Some(value.to_owned());
            }
            "weights" => {
                if args.mode != ModeArg::Explore {
                    return Err(err(word, "\"weights=\" is only valid with \"explore\""));
                }
                if seen.contains(&"spread") {
                    return Err(err(
                        word,
                        "\"spread=\" and \"weights=\" are two ways to explore: give one",
                    ));
                }
                let mut set = Vec::new();
                for item in value.split(',') {
                    let w: u32 = item
                        .parse()
                        .map_err(|_| err(word, format!("\"{item}\" is not a whole number")))?;
                    if w == 0 || w > MAX_WEIGHT {
                        return Err(err(word, format!("weight {w} is outside 1..={MAX_WEIGHT}")));
                    }
                    if !set.contains(&w) {
                        set.push(w);
                    }
                }
                args.weights = set;
            }
            "spread" => {
                if args.mode == ModeArg::Observe {
                    return Err(err(
                        word,
                        "\"spread=\" needs \"explore\" or a policy file (observe-only is exact round robin)",
                    ));
                }
                if seen.contains(&"weights") {
                    return Err(err(
                        word,
                        "\"spread=\" and \"weights=\" are two ways to explore: give one",
                    ));
                }
                let x: f64 = value
                    .parse()
                    .map_err(|_| err(word, "expected a number such as 0.5 (the sigma of ln w)"))?;
                if !(x > 0.0 && x <= MAX_SPREAD) {
                    return Err(err(word, format!("the spread must be above 0 and at most {MAX_SPREAD}")));
                }
                args.spread = Some(x);
            }
            "epsilon" => {
                if !matches!(args.mode, ModeArg::Policy(_)) {
                    return Err(err(word, "\"epsilon=\" is only valid with a policy file"));
                }
                let p: f64 = value
                    .parse()
                    .map_err(|_| err(word, "expected a probability such as 0.05"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(err(word, "the probability must be between 0 and 1"));
                }
                args.epsilon = p;
            }
            "slow_start" => {
                if args.mode == ModeArg::Observe {
                    return Err(err(
                        word,
                        "\"slow_start=\" needs \"explore\" or a policy file (observe-only is exact round robin)",
                    ));
                }
                let ms = parse_time_ms(value)
                    .ok_or_else(|| err(word, "expected a time such as 10s or 1m"))?;
                if ms > MAX_SLOW_START_MS {
                    return Err(err(word, "the ramp must be at most 1h"));
                }
                args.slow_start_ms = ms;
            }
            "key" => {
                key_variables(value).map_err(|e| err(word, e))?;
                args.key = Some(value.to_owned());
            }
            "balance" => {
                args.balance = parse_balance(value).map_err(|e| err(word, e))?;
            }
            _ => {
                return Err(err(
                    word,
                    "unknown parameter (expected interval=, choose=, log=, weights=, spread=, epsilon=, slow_start=, key=, balance=)",
                ))
            }
        }
    }
    let hashing = args.choose == ChooseArg::Hash;
    if let Some(&word) = rest
        .iter()
        .find(|w| !hashing && (w.starts_with("key=") || w.starts_with("balance=")))
    {
        return Err(err(word, "only valid with \"choose=hash\""));
    }
    if hashing && args.slow_start_ms > 0 {
        let word = rest
            .iter()
            .find(|w| w.starts_with("slow_start="))
            .copied()
            .unwrap_or("slow_start=");
        return Err(err(
            word,
            "not with \"choose=hash\" (a ramp would move the returning peer's keys away and back)",
        ));
    }
    if hashing && args.key.is_none() {
        let word = rest
            .iter()
            .find(|w| w.starts_with("choose="))
            .copied()
            .unwrap_or("choose=hash");
        return Err(err(word, "needs \"key=\" (for example key=$request_uri)"));
    }
    if !args.choose_given && matches!(args.mode, ModeArg::Policy(_)) {
        args.choose = ChooseArg::P2c;
    }
    Ok(args)
}

/// Parses `balance=`: `off`, or a factor ≥ 1 (at most 1000, kept to
/// thousandths).
pub fn parse_balance(text: &str) -> Result<Balance, &'static str> {
    if text == "off" {
        return Ok(Balance::Off);
    }
    let c: f64 = text
        .parse()
        .map_err(|_| "expected a factor such as 1.25, or \"off\"")?;
    if !c.is_finite() || text.starts_with(['+', '-']) || text.contains(['e', 'E']) {
        return Err("expected a factor such as 1.25, or \"off\"");
    }
    if c < 1.0 {
        return Err("the factor must be at least 1 (1 = no peer above the mean)");
    }
    let permille = (c * 1000.0).round();
    if permille > f64::from(MAX_BALANCE_PERMILLE) {
        return Err("the factor must be at most 1000 (use \"off\" for no bound)");
    }
    Ok(Balance::Factor(permille as u32))
}

/// The variables an nginx complex value names (`$name`, `${name}`;
/// `$1`.. are regex captures and included as written), or what is wrong
/// with its syntax. nginx's own compiler would refuse the same texts, but
/// without naming the parameter.
pub fn key_variables(text: &str) -> Result<Vec<&str>, &'static str> {
    if text.is_empty() {
        return Err("the key is empty");
    }
    let b = text.as_bytes();
    let name_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut vars = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        i += 1;
        let braced = b.get(i) == Some(&b'{');
        if braced {
            i += 1;
        }
        let start = i;
        while i < b.len() && name_char(b[i]) {
            i += 1;
        }
        if i == start {
            return Err("\"$\" is not followed by a variable name");
        }
        vars.push(&text[start..i]);
        if braced {
            if b.get(i) != Some(&b'}') {
                return Err("\"${\" is not closed by \"}\"");
            }
            i += 1;
        }
    }
    if vars.is_empty() {
        return Err("the key names no variable: every request would hash alike");
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_directive_observes() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.mode, ModeArg::Observe);
        assert_eq!(a.choose, ChooseArg::Wrr);
        assert_eq!(a.interval_ms, None);
    }

    #[test]
    fn a_policy_chooses_by_p2c_unless_told_otherwise() {
        let a = parse(&["p.json"]).unwrap();
        assert_eq!((a.choose, a.choose_given), (ChooseArg::P2c, false));
        let a = parse(&["p.json", "choose=wrr"]).unwrap();
        assert_eq!((a.choose, a.choose_given), (ChooseArg::Wrr, true));
        let a = parse(&["explore"]).unwrap();
        assert_eq!((a.choose, a.choose_given), (ChooseArg::Wrr, false));
        let a = parse(&["explore", "choose=p2c"]).unwrap();
        assert_eq!((a.choose, a.choose_given), (ChooseArg::P2c, true));
    }

    #[test]
    fn observe_with_parameters() {
        let a = parse(&["log=logs/x.jsonl", "interval=1s"]).unwrap();
        assert_eq!(a.mode, ModeArg::Observe);
        assert_eq!(a.log.as_deref(), Some("logs/x.jsonl"));
        assert_eq!(a.interval_ms, Some(1000));
    }

    #[test]
    fn explore_with_weights() {
        let a = parse(&["explore", "weights=1,2,2,8", "interval=500ms"]).unwrap();
        assert_eq!(a.mode, ModeArg::Explore);
        assert_eq!(a.weights, vec![1, 2, 8]);
        assert_eq!(a.interval_ms, Some(500));
    }

    #[test]
    fn policy_with_epsilon_and_p2c() {
        let a = parse(&["p.json", "epsilon=0.1", "choose=p2c"]).unwrap();
        assert_eq!(a.mode, ModeArg::Policy("p.json".into()));
        assert_eq!(a.epsilon, 0.1);
        assert_eq!(a.choose, ChooseArg::P2c);
        assert_eq!(a.weights, DEFAULT_EXPLORE_WEIGHTS.to_vec());
    }

    #[test]
    fn slow_start_takes_a_time() {
        let a = parse(&["p.json", "slow_start=30s", "choose=p2c"]).unwrap();
        assert_eq!(a.slow_start_ms, 30_000);
        assert_eq!(
            parse(&["explore", "slow_start=500ms"])
                .unwrap()
                .slow_start_ms,
            500
        );
        assert_eq!(
            parse(&["p.json"]).unwrap().slow_start_ms,
            0,
            "off by default"
        );
    }

    #[test]
    fn hash_with_key_and_balance() {
        let a = parse(&["choose=hash", "key=$request_uri"]).unwrap();
        assert_eq!(a.choose, ChooseArg::Hash);
        assert_eq!(a.key.as_deref(), Some("$request_uri"));
        assert_eq!(a.balance, Balance::Factor(1250), "default 1.25");
        let a = parse(&[
            "p.json",
            "key=${cookie_session}x",
            "choose=hash",
            "balance=off",
        ])
        .unwrap();
        assert_eq!(a.key.as_deref(), Some("${cookie_session}x"));
        assert_eq!(a.balance, Balance::Off);
        let a = parse(&["explore", "choose=hash", "key=$host$uri", "balance=1.0"]).unwrap();
        assert_eq!(a.balance, Balance::Factor(1000));
        assert_eq!(parse_balance("2.5"), Ok(Balance::Factor(2500)));
        assert_eq!(parse_balance("1000"), Ok(Balance::Factor(1_000_000)));
        assert_eq!(parse(&[]).unwrap().key, None);
    }

    #[test]
    fn key_variables_are_found() {
        assert_eq!(key_variables("$request_uri"), Ok(vec!["request_uri"]));
        assert_eq!(
            key_variables("${host}:$uri/$1"),
            Ok(vec!["host", "uri", "1"])
        );
        assert_eq!(key_variables("a$cookie_s-b"), Ok(vec!["cookie_s"]));
    }

    #[test]
    fn spread_explores_log_normally() {
        let a = parse(&["explore", "spread=0.5"]).unwrap();
        assert_eq!((a.mode, a.spread), (ModeArg::Explore, Some(0.5)));
        assert_eq!(
            parse(&["explore"]).unwrap().spread,
            None,
            "uniform by default"
        );
        let a = parse(&["p.json", "epsilon=0.1", "spread=0.25"]).unwrap();
        assert_eq!((a.epsilon, a.spread), (0.1, Some(0.25)));
        assert_eq!(parse(&["explore", "spread=3"]).unwrap().spread, Some(3.0));
    }

    #[test]
    fn times() {
        assert_eq!(parse_time_ms("2"), Some(2000));
        assert_eq!(parse_time_ms("2s"), Some(2000));
        assert_eq!(parse_time_ms("250ms"), Some(250));
        assert_eq!(parse_time_ms("1m"), Some(60_000));
        assert_eq!(parse_time_ms("1h"), Some(3_600_000));
        assert_eq!(parse_time_ms("s"), None);
        assert_eq!(parse_time_ms("2x"), None);
        assert_eq!(parse_time_ms("-2s"), None);
        assert_eq!(parse_time_ms("99999999999999999999s"), None);
    }

    #[test]
    fn bad_words_are_named() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&["explore", "interval=0s"], "interval=0s", "between 100ms"),
            (
                &["explore", "interval=5d"],
                "interval=5d",
                "expected a time",
            ),
            (
                &["explore", "choose=fastest"],
                "choose=fastest",
                "\"wrr\", \"p2c\" or \"hash\"",
            ),
            (&["choose=hash"], "choose=hash", "needs \"key=\""),
            (
                &["key=$request_uri"],
                "key=$request_uri",
                "only valid with \"choose=hash\"",
            ),
            (
                &["p.json", "choose=p2c", "balance=2"],
                "balance=2",
                "only valid with \"choose=hash\"",
            ),
            (&["choose=hash", "key="], "key=", "empty"),
            (&["choose=hash", "key=uri"], "key=uri", "names no variable"),
            (
                &["choose=hash", "key=$"],
                "key=$",
                "not followed by a variable name",
            ),
            (
                &["choose=hash", "key=/$-x"],
                "key=/$-x",
                "not followed by a variable name",
            ),
            (&["choose=hash", "key=${uri"], "key=${uri", "not closed"),
            (
                &["choose=hash", "key=${}"],
                "key=${}",
                "not followed by a variable name",
            ),
            (
                &["choose=hash", "key=$uri", "key=$args"],
                "key=$args",
                "twice",
            ),
            (
                &["choose=hash", "key=$uri", "balance=0.9"],
                "balance=0.9",
                "at least 1",
            ),
            (
                &["choose=hash", "key=$uri", "balance=0"],
                "balance=0",
                "at least 1",
            ),
            (
                &["choose=hash", "key=$uri", "balance=-2"],
                "balance=-2",
                "expected a factor",
            ),
            (
                &["choose=hash", "key=$uri", "balance=abc"],
                "balance=abc",
                "expected a factor",
            ),
            (
                &["choose=hash", "key=$uri", "balance="],
                "balance=",
                "expected a factor",
            ),
            (
                &["choose=hash", "key=$uri", "balance=NaN"],
                "balance=NaN",
                "expected a factor",
            ),
            (
                &["choose=hash", "key=$uri", "balance=inf"],
                "balance=inf",
                "expected a factor",
            ),
            (
                &["choose=hash", "key=$uri", "balance=1e3"],
                "balance=1e3",
                "expected a factor",
            ),
            (
                &["choose=hash", "key=$uri", "balance=5000"],
                "balance=5000",
                "at most 1000",
            ),
            (
                &["choose=hash", "key=$uri", "balance=on"],
                "balance=on",
                "expected a factor",
            ),
            (
                &["explore", "weights=1,0"],
                "weights=1,0",
                "outside 1..=1000",
            ),
            (
                &["explore", "weights=1,x"],
                "weights=1,x",
                "not a whole number",
            ),
            (&["explore", "weights="], "weights=", "not a whole number"),
            (
                &["p.json", "weights=1,3"],
                "weights=1,3",
                "only valid with \"explore\"",
            ),
            (
                &["explore", "epsilon=0.1"],
                "epsilon=0.1",
                "only valid with a policy",
            ),
            (&["p.json", "epsilon=1.5"], "epsilon=1.5", "between 0 and 1"),
            (&["p.json", "epsilon=abc"], "epsilon=abc", "probability"),
            (&["p.json", "log="], "log=", "empty"),
            (&["p.json", "colour=red"], "colour=red", "unknown parameter"),
            (&["slow_start=10s"], "slow_start=10s", "observe-only"),
            (
                &["p.json", "slow_start=fast"],
                "slow_start=fast",
                "expected a time",
            ),
            (&["p.json", "slow_start=2h"], "slow_start=2h", "at most 1h"),
            (
                &["p.json", "slow_start=-1s"],
                "slow_start=-1s",
                "expected a time",
            ),
            (&["p.json", "extra"], "extra", "KEY=VALUE"),
            (&["spread=0.5"], "spread=0.5", "observe-only"),
            (&["explore", "spread=0"], "spread=0", "above 0"),
            (&["explore", "spread=-1"], "spread=-1", "above 0"),
            (&["explore", "spread=3.5"], "spread=3.5", "at most 3"),
            (&["explore", "spread=NaN"], "spread=NaN", "above 0"),
            (&["explore", "spread=inf"], "spread=inf", "at most 3"),
            (&["explore", "spread=wide"], "spread=wide", "sigma of ln w"),
            (&["explore", "spread="], "spread=", "sigma of ln w"),
            (
                &["explore", "weights=1,3", "spread=0.5"],
                "spread=0.5",
                "give one",
            ),
            (
                &["explore", "spread=0.5", "weights=1,3"],
                "weights=1,3",
                "give one",
            ),
            (
                &["explore", "spread=0.5", "spread=0.2"],
                "spread=0.2",
                "twice",
            ),
            (
                &["p.json", "interval=1s", "interval=2s"],
                "interval=2s",
                "twice",
            ),
            (&[""], "", "empty"),
        ];
        for (words, word, needle) in cases {
            let e = parse(words).expect_err(&format!("{words:?} should fail"));
            assert_eq!(&e.word, word, "{words:?}");
            let text = e.to_string();
            assert!(text.contains(needle), "{words:?}: {text}");
            assert!(text.contains("deep_sched"), "{text}");
        }
    }
}
