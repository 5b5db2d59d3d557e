//! PromQL series selectors (`up`, `{job="node"}`, `http_requests_total{code=~"5..", env!="dev"}`)
//! turned into remote read label matchers.

use super::wire::{LabelMatcher, MatchType};

/// Parses a series selector. The regular expressions are not compiled here: the source checks
/// them and its error is reported.
pub fn parse(s: &str) -> Result<Vec<LabelMatcher>, String> {
    let mut p = Parser {
        s: s.trim(),
        pos: 0,
    };
    let err = |p: &Parser<'_>, what: &str| {
        format!(
            "selector {s:?}: {what} at offset {} (expected e.g. up{{job=\"node\"}})",
            p.pos
        )
    };
    let mut out = Vec::new();
    let name = p.take_while(|c, first| {
        c == '_' || c == ':' || c.is_ascii_alphabetic() || (!first && c.is_ascii_digit())
    });
    if !name.is_empty() {
        out.push(LabelMatcher {
            r#type: MatchType::Eq as i32,
            name: "__name__".into(),
            value: name.to_owned(),
        });
    }
    p.skip_space();
    if p.eat('{') {
        loop {
            p.skip_space();
            if p.eat('}') {
                break;
            }
            let label = p.take_while(|c, first| {
                c == '_' || c.is_ascii_alphabetic() || (!first && c.is_ascii_digit())
            });
            if label.is_empty() {
                return Err(err(&p, "a label name"));
            }
            p.skip_space();
            let op = if p.eat_str("=~") {
                MatchType::Re
            } else if p.eat_str("!~") {
                MatchType::Nre
            } else if p.eat_str("!=") {
                MatchType::Neq
            } else if p.eat('=') {
                MatchType::Eq
            } else {
                return Err(err(&p, "one of = != =~ !~"));
            };
            p.skip_space();
            let value = p.string().map_err(|e| err(&p, &e))?;
            out.push(LabelMatcher {
                r#type: op as i32,
                name: label.to_owned(),
                value,
            });
            p.skip_space();
            if p.eat(',') {
                continue;
            }
            if p.eat('}') {
                break;
            }
            return Err(err(&p, "',' or '}'"));
        }
    }
    p.skip_space();
    if p.pos != p.s.len() {
        return Err(err(&p, "unexpected text"));
    }
    if out.is_empty() {
        return Err(format!(
            "selector {s:?} selects nothing: give a metric name or a matcher"
        ));
    }
    let matches_empty = |m: &LabelMatcher| match MatchType::try_from(m.r#type) {
        Ok(MatchType::Eq) => m.value.is_empty(),
        Ok(MatchType::Neq) => !m.value.is_empty(),
        Ok(MatchType::Nre) => true,
        // `.*`-like patterns match the empty string; the source judges the others.
        Ok(MatchType::Re) => matches!(m.value.as_str(), ".*" | "" | "^.*$"),
        Err(_) => true,
    };
    if out.iter().all(matches_empty) {
        return Err(format!(
            "selector {s:?}: at least one matcher must not match the empty string (e.g. {{__name__=~\".+\"}})"
        ));
    }
    Ok(out)
}

/// The selector of `matchers`, for messages.
pub fn display(matchers: &[LabelMatcher]) -> String {
    let parts: Vec<String> = matchers
        .iter()
        .map(|m| {
            let op = match MatchType::try_from(m.r#type) {
                Ok(MatchType::Eq) => "=",
                Ok(MatchType::Neq) => "!=",
                Ok(MatchType::Re) => "=~",
                Ok(MatchType::Nre) | Err(_) => "!~",
            };
            format!("{}{op}{:?}", m.name, m.value)
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn take_while(&mut self, ok: impl Fn(char, bool) -> bool) -> &'a str {
        let start = self.pos;
        for (i, c) in self.rest().char_indices() {
            if !ok(c, start + i == start) {
                break;
            }
            self.pos = start + i + c.len_utf8();
        }
        &self.s[start..self.pos]
    }

    fn skip_space(&mut self) {
        self.take_while(|c, _| c.is_whitespace());
    }

    fn eat(&mut self, c: char) -> bool {
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn eat_str(&mut self, t: &str) -> bool {
        if self.rest().starts_with(t) {
            self.pos += t.len();
            true
        } else {
            false
        }
    }

    /// A PromQL string: "…" or '…' with Go escapes, or `…` raw.
    fn string(&mut self) -> Result<String, String> {
        let quote = self
            .rest()
            .chars()
            .next()
            .filter(|c| matches!(c, '"' | '\'' | '`'))
            .ok_or("a quoted value")?;
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                self.pos += i + 1;
                return Ok(out);
            }
            if c == '\\' && quote != '`' {
                let (_, e) = chars.next().ok_or("an escape")?;
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '\\' | '"' | '\'' => e,
                    other => return Err(format!("a known escape, not \\{other}")),
                });
            } else {
                out.push(c);
            }
        }
        Err("a closing quote".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: MatchType, n: &str, v: &str) -> LabelMatcher {
        LabelMatcher {
            r#type: t as i32,
            name: n.into(),
            value: v.into(),
        }
    }

    #[test]
    fn parses_names_matchers_and_quotes() {
        assert_eq!(
            parse("up").unwrap(),
            vec![m(MatchType::Eq, "__name__", "up")]
        );
        assert_eq!(
            parse(r#" node_cpu:rate5m { job = "node", mode!~'idle|iowait' , cpu=~`1\d`, } "#)
                .unwrap(),
            vec![
                m(MatchType::Eq, "__name__", "node_cpu:rate5m"),
                m(MatchType::Eq, "job", "node"),
                m(MatchType::Nre, "mode", "idle|iowait"),
                m(MatchType::Re, "cpu", r"1\d"),
            ]
        );
        assert_eq!(
            parse(r#"{__name__=~".+", path="a\"b\\c"}"#).unwrap(),
            vec![
                m(MatchType::Re, "__name__", ".+"),
                m(MatchType::Eq, "path", "a\"b\\c"),
            ]
        );
        assert_eq!(
            display(&parse(r#"up{job!="x"}"#).unwrap()),
            r#"{__name__="up", job!="x"}"#
        );
    }

    #[test]
    fn rejects_what_prometheus_rejects_with_the_offset() {
        for bad in [
            "",
            "{}",
            "{job=~\".*\"}",
            "{job=\"\"}",
            "up{job=\"a\"",
            "up{job:\"a\"}",
            "up{job=a}",
            "up{1job=\"a\"}",
            "up{job=\"a\\q\"}",
            "up job",
            "9up",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("selector"), "{bad:?}: {e}");
        }
    }
}
