//! The reward: an arithmetic expression over one interval's outcome, e.g.
//! `-p95_ms - 1000*error_rate`.
//!
//! Names: `p50_ms`, `p95_ms`, `p99_ms`, `mean_ms` (latency of all tries),
//! `error_rate` ((5xx + failures) / tries), `rps`, `inflight`. Operators
//! `+ - * /`, unary minus, parentheses, numbers. A recursive-descent
//! parser: the grammar is five lines, smaller than any dependency.

use deep_sched_core::counters::PeerInterval;

/// A parsed reward expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(f64),
    Var(Var),
    Neg(Box<Expr>),
    Bin(Box<Expr>, char, Box<Expr>),
}

/// A named interval metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    P50,
    P95,
    P99,
    Mean,
    ErrorRate,
    Rps,
    Inflight,
}

const NAMES: [(&str, Var); 7] = [
    ("p50_ms", Var::P50),
    ("p95_ms", Var::P95),
    ("p99_ms", Var::P99),
    ("mean_ms", Var::Mean),
    ("error_rate", Var::ErrorRate),
    ("rps", Var::Rps),
    ("inflight", Var::Inflight),
];

/// A syntax error with its position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("reward \"{text}\": at character {pos}: {problem}")]
pub struct RewardError {
    pub text: String,
    pub pos: usize,
    pub problem: String,
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn err<T>(&self, problem: impl Into<String>) -> Result<T, RewardError> {
        Err(RewardError {
            text: self.text.to_owned(),
            pos: self.i + 1,
            problem: problem.into(),
        })
    }
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }
    // expr := term (('+'|'-') term)*
    fn expr(&mut self) -> Result<Expr, RewardError> {
        let mut e = self.term()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.i += 1;
            e = Expr::Bin(Box::new(e), op as char, Box::new(self.term()?));
        }
        Ok(e)
    }
    // term := unary (('*'|'/') unary)*
    fn term(&mut self) -> Result<Expr, RewardError> {
        let mut e = self.unary()?;
        while let Some(op @ (b'*' | b'/')) = self.peek() {
            self.i += 1;
            e = Expr::Bin(Box::new(e), op as char, Box::new(self.unary()?));
        }
        Ok(e)
    }
    // unary := '-' unary | atom
    fn unary(&mut self) -> Result<Expr, RewardError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        self.atom()
    }
    // atom := number | name | '(' expr ')'
    fn atom(&mut self) -> Result<Expr, RewardError> {
        match self.peek() {
            Some(b'(') => {
                self.i += 1;
                let e = self.expr()?;
                if self.peek() != Some(b')') {
                    return self.err("expected ')'");
                }
                self.i += 1;
                Ok(e)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_digit()
                        || matches!(self.s[self.i], b'.' | b'e' | b'E'))
                {
                    self.i += 1;
                }
                match self.text[start..self.i].parse::<f64>() {
                    Ok(v) => Ok(Expr::Num(v)),
                    Err(_) => {
                        self.i = start;
                        self.err("not a number")
                    }
                }
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
                {
                    self.i += 1;
                }
                let name = &self.text[start..self.i];
                match NAMES.iter().find(|(n, _)| *n == name) {
                    Some((_, v)) => Ok(Expr::Var(*v)),
                    None => {
                        self.i = start;
                        self.err(format!(
                            "unknown name \"{name}\" (known: {})",
                            NAMES.iter().map(|n| n.0).collect::<Vec<_>>().join(", ")
                        ))
                    }
                }
            }
            Some(c) => self.err(format!("unexpected '{}'", c as char)),
            None => self.err("unexpected end"),
        }
    }
}

impl Expr {
    /// Parses a reward expression.
    pub fn parse(text: &str) -> Result<Expr, RewardError> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
            text,
        };
        let e = p.expr()?;
        if p.peek().is_some() {
            return p.err("unexpected text after the expression");
        }
        Ok(e)
    }

    /// Evaluates on one interval's statistics (of a whole upstream or agent).
    pub fn eval(&self, i: &PeerInterval) -> f64 {
        match self {
            Expr::Num(v) => *v,
            Expr::Var(v) => match v {
                Var::P50 => i.latency_p50_ms,
                Var::P95 => i.latency_p95_ms,
                Var::P99 => i.latency_p99_ms,
                Var::Mean => i.latency_mean_ms,
                Var::ErrorRate => i.error_rate,
                Var::Rps => i.rps,
                Var::Inflight => i.inflight,
            },
            Expr::Neg(e) => -e.eval(i),
            Expr::Bin(a, op, b) => {
                let (x, y) = (a.eval(i), b.eval(i));
                match op {
                    '+' => x + y,
                    '-' => x - y,
                    '*' => x * y,
                    _ => {
                        if y == 0.0 {
                            0.0
                        } else {
                            x / y
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_evaluates_with_precedence() {
        let i = PeerInterval {
            latency_p95_ms: 40.0,
            error_rate: 0.01,
            rps: 100.0,
            ..PeerInterval::default()
        };
        let e = Expr::parse("-p95_ms - 1000*error_rate").unwrap();
        assert!((e.eval(&i) + 50.0).abs() < 1e-12);
        assert_eq!(Expr::parse("2 + 3 * (4 - 1) / 3").unwrap().eval(&i), 5.0);
        assert_eq!(Expr::parse("--rps").unwrap().eval(&i), 100.0);
        assert_eq!(Expr::parse("rps / 0").unwrap().eval(&i), 0.0);
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = Expr::parse("-p95 - 1").unwrap_err();
        assert_eq!(e.pos, 2);
        assert!(e.to_string().contains("unknown name \"p95\""));
        assert!(Expr::parse("(rps").unwrap_err().problem.contains("')'"));
        assert!(Expr::parse("rps rps")
            .unwrap_err()
            .problem
            .contains("after"));
        assert!(Expr::parse("").unwrap_err().problem.contains("end"));
        assert!(Expr::parse("1 + $").unwrap_err().problem.contains("'$'"));
    }
}
