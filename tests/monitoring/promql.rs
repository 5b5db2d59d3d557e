//! PromQL as the dashboard test needs it: instant queries against a Prometheus, Grafana's variable
//! substitution, and the metric names and selectors in an expression or a scrape.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::harness::{Http, enc};

/// Runs an instant query; a short description of the result when it holds at least one number
/// (a panel of nothing but NaN shows no data, as an empty one does).
pub async fn instant_query(http: &Http, prom_url: &str, expr: &str) -> Result<String, String> {
    let url = format!("{prom_url}/api/v1/query?query={}", enc(expr));
    let data = http.get(&url).await?.prom_data()?;
    let result = &data["result"];
    let number = |v: &Value| {
        v.as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|f| !f.is_nan())
    };
    match data["resultType"].as_str() {
        Some("vector") => {
            let series = result.as_array().map_or(0, Vec::len);
            if series == 0 {
                return Err("empty result".to_owned());
            }
            let values: Vec<(&Value, f64)> = result
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| number(&s["value"][1]).map(|v| (&s["metric"], v)))
                .collect();
            match values.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
                Some((metric, v)) => Ok(format!("{series} series, max {metric} = {v}")),
                None => Err(format!("{series} series, every value NaN: {result}")),
            }
        }
        Some("scalar") => number(&result[1])
            .map(|v| format!("scalar {v}"))
            .ok_or_else(|| format!("scalar NaN: {result}")),
        other => Err(format!("unexpected result type {other:?}: {data}")),
    }
}

/// Replaces `$name` and `${name}` as Grafana does; an unknown variable is an error.
pub fn substitute(text: &str, subs: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {text}"))?;
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let value = subs
            .get(name)
            .ok_or_else(|| format!("unknown variable ${name} in {text}"))?;
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A value as Grafana puts it into a regex matcher: regex metacharacters escaped, the
/// backslash itself escaped for the PromQL string.
pub fn regex_escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if "\\^$*+?.()|{}[]'".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

/// Identifiers in a PromQL expression, outside string literals.
pub fn identifiers(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = expr.char_indices().peekable();
    let mut in_string = false;
    let mut word = String::new();
    while let Some((_, c)) = chars.next() {
        if in_string {
            if c == '\\' {
                chars.next();
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' || (c == '$' && word.is_empty()) {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if c == '"' {
            in_string = true;
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out.retain(|w| {
        !w.starts_with('$') && !w.starts_with(|c: char| c.is_ascii_digit()) && !w.contains(':')
    });
    out
}

/// `(metric, matchers)` for every `metric{...}` in a PromQL expression.
pub fn selectors(expr: &str) -> Vec<(String, String)> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' {
            // The identifier right before the brace.
            let mut start = i;
            while start > 0
                && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_')
            {
                start -= 1;
            }
            let end = expr[i..].find('}').map(|e| i + e).unwrap_or(bytes.len());
            if start < i {
                out.push((expr[start..i].to_owned(), expr[i + 1..end].to_owned()));
            }
            i = end;
        }
        i += 1;
    }
    out
}

/// Sample names in a text-format scrape, with the label names each carries.
pub fn exported_metrics(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_owned()).or_default();
        if line[name_end..].starts_with('{') {
            let body = &line[name_end + 1..line.rfind('}').unwrap_or(line.len())];
            let mut rest = body;
            while let Some(eq) = rest.find("=\"") {
                let name = rest[..eq].trim_start_matches([',', ' ']);
                labels.insert(name.to_owned());
                // Skip the quoted value.
                let value = &rest[eq + 2..];
                let mut end = 0;
                let vb = value.as_bytes();
                while end < vb.len() && vb[end] != b'"' {
                    end += if vb[end] == b'\\' { 2 } else { 1 };
                }
                rest = value.get(end + 1..).unwrap_or("");
            }
        }
    }
    out
}
