//! YAML text to the raw structs, with every type-level error of the file: serde stops at the
//! first, so after each error the offending key is blanked out (its lines, keeping the line
//! numbers of the rest) and the text is parsed again, until it parses or an error cannot be
//! worked around (a YAML syntax error, or no line to blank).

use super::{ConfigError, ConfigErrors, raw};

/// Most type-level errors listed for one file.
const MAX_ERRORS: usize = 20;

/// Strips the " at line N, column M" serde-saphyr appends, since we print the location ourselves.
fn strip_location(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(", column ") => &msg[..i],
        _ => msg,
    }
}

/// The parser's limits, so that hostile YAML (alias bombs, deep nesting) fails fast.
fn parse_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_depth = 64;
    budget.max_documents = 1;
    budget.max_nodes = 250_000;
    budget.max_total_scalar_bytes = 16 << 20;
    serde_saphyr::options! { budget: Some(budget) }
}

/// Keys whose values are wrapped in `Spanned` (for line numbers): serde sees an extra `value`
/// level below them, which is not part of the user's file.
const SPANNED_KEYS: [&str; 17] = [
    "health_check",
    "identities",
    "tls",
    "listen",
    "url",
    "connect",
    "response_header",
    "idle",
    "match",
    "upstream",
    "tenant",
    "rewrite",
    "prometheus",
    "external_labels",
    "version",
    "lowest_timestamp",
    "routes",
];

/// The key path as the user wrote it: `routes[1].upstream`, without `Spanned`'s inner level.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    let mut prev: Option<&Segment> = None;
    let mut after_routes_index = false;
    for seg in path.iter() {
        let spanned_parent = match prev {
            Some(Segment::Map { key }) => SPANNED_KEYS.contains(&key.as_str()) && key != "routes",
            Some(Segment::Seq { .. }) => after_routes_index,
            _ => false,
        };
        match seg {
            Segment::Map { key } if key == "value" && spanned_parent => {
                prev = Some(seg);
                after_routes_index = false;
                // Mark this `value` as consumed so a label literally named "value" below survives.
                continue;
            }
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
        after_routes_index = matches!(seg, Segment::Seq { .. })
            && matches!(prev, Some(Segment::Map { key }) if key == "routes");
        prev = Some(seg);
    }
    if out.is_empty() { ".".into() } else { out }
}

/// One parse: the raw structs, or the first error.
fn parse_once(yaml: &str) -> Result<raw::RawConfig, ConfigError> {
    let mut path: Option<String> = None;
    let result =
        serde_saphyr::with_deserializer_from_str_with_options(yaml, parse_options(), |de| {
            serde_path_to_error::deserialize::<_, raw::RawConfig>(de).map_err(|e| {
                path = Some(key_path(e.path()));
                e.into_inner()
            })
        });
    result.map_err(|e| {
        let loc = e.location();
        let message = e.without_snippet().to_string();
        ConfigError {
            path: path.unwrap_or_else(|| ".".into()),
            line: loc.map(|l| l.line() as usize),
            column: loc.map(|l| l.column() as usize),
            message: strip_location(&message).to_owned(),
        }
    })
}

/// Whether the YAML itself is broken (not a value of the wrong type): the parser's position
/// says nothing about which key to leave out.
fn is_syntax_error(e: &ConfigError) -> bool {
    e.path == "." || e.path.ends_with('?')
}

/// The key a line starts with: `url` for `    url: x`, `name` for `  - name: y`.
fn key_on_line(line: &str) -> Option<&str> {
    let t = line.trim_start().trim_start_matches("- ").trim_start();
    let (key, _) = t.split_once(':')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty() && !key.contains(' ')).then_some(key)
}

/// A syntax error, said so that a user can act on it: the key path with the key on the error's
/// line instead of `?`, and what YAML expected.
fn explain_syntax_error(e: &mut ConfigError, yaml: &str) {
    let line = e.line.and_then(|l| yaml.lines().nth(l.saturating_sub(1)));
    if let (Some(prefix), Some(key)) = (e.path.strip_suffix('?'), line.and_then(key_on_line)) {
        e.path = format!("{prefix}{key}");
    }
    let m = &e.message;
    if m.contains("did not find expected key") || m.contains("mapping values are not allowed") {
        e.message = format!(
            "{m}: YAML expected this line to line up with the keys around it (indent it like its \
             siblings; indentation is spaces, not tabs), or a value containing \": \" to be quoted"
        );
    } else if m.contains("found character that cannot start any token")
        && line.is_some_and(|l| l.contains('\t'))
    {
        e.message = format!("{m}: YAML does not allow tabs for indentation");
    }
}

/// Blanks the key at `line` (1-based) and the lines indented deeper below it, keeping every
/// line's number; a sequence item's `- key: value` keeps its `-`, so later items keep their
/// index. Returns false when there was nothing to blank.
fn blank_key(text: &mut String, line: usize) -> bool {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let Some(first) = lines.get(line.saturating_sub(1)).cloned() else {
        return false;
    };
    let indent = first.len() - first.trim_start().len();
    let trimmed = first.trim_start();
    let item = trimmed.starts_with("- ");
    let replacement = if item {
        format!("{}-", &first[..indent])
    } else {
        String::new()
    };
    if replacement == first {
        return false;
    }
    lines[line - 1] = replacement;
    // Children: deeper than the key itself (for an item, deeper than its `-` plus 2).
    let key_indent = if item { indent + 2 } else { indent };
    for l in lines.iter_mut().skip(line) {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if l.len() - t.len() > key_indent && !item {
            l.clear();
        } else {
            break;
        }
    }
    *text = lines.join("\n");
    text.push('\n');
    true
}

/// Whether `e` only follows from a key blanked out earlier (`missing field` of a removed key).
fn follows_from_blanking(e: &ConfigError, blanked: &[String]) -> bool {
    let Some(rest) = e.message.strip_prefix("missing field `") else {
        return false;
    };
    let Some(field) = rest.split('`').next() else {
        return false;
    };
    let key = if e.path == "." {
        field.to_owned()
    } else {
        format!("{}.{field}", e.path)
    };
    blanked.iter().any(|b| {
        b == &key || b.starts_with(&format!("{key}.")) || b.starts_with(&format!("{key}["))
    })
}

/// Removes the `key: value` pair around `col` (1-based) when it sits inside a one-line flow
/// mapping (`match: { path: /, methods: 3 }`), so the rest of that mapping stays. Returns false
/// when the line has no such pair there.
fn blank_flow_pair(text: &mut String, line: usize, col: usize) -> bool {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let Some(l) = lines.get(line.saturating_sub(1)) else {
        return false;
    };
    // The parser counts columns in characters; slicing needs a byte offset on a char boundary.
    let at = l
        .char_indices()
        .nth(col.saturating_sub(1))
        .map_or(l.len(), |(i, _)| i);
    let (before, after) = l.split_at(at);
    // Only a flat flow mapping: one '{' before, its '}' after, no nesting around the pair.
    let (Some(open), Some(close)) = (before.rfind('{'), after.find('}').map(|i| at + i)) else {
        return false;
    };
    if before[open + 1..].contains(['{', '}', '[', ']']) || l[at..close].contains(['{', '[']) {
        return false;
    }
    let start = before[..].rfind(',').filter(|c| *c > open).unwrap_or(open) + 1;
    let end = l[at..close].find(',').map_or(close, |i| at + i);
    let mut out = String::with_capacity(l.len());
    out.push_str(&l[..start]);
    let rest = &l[end..];
    // Drop the comma that separated the pair from a neighbour.
    let rest = match rest.strip_prefix(',') {
        Some(r) => r,
        None => {
            if out.ends_with(',') {
                out.pop();
            }
            rest
        }
    };
    out.push_str(rest);
    if out == *l {
        return false;
    }
    lines[line - 1] = out;
    *text = lines.join("\n");
    text.push('\n');
    true
}

/// Whether key path `inner` lies below `outer` (`routes[0].url` below `routes[0]` and `routes`).
fn is_below(inner: &str, outer: &str) -> bool {
    outer == "."
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// Plain words for the parser's container errors.
fn explain_type_error(e: &mut ConfigError) {
    // The parser's advice is for Rust programmers.
    if let Some(i) = e.message.find("; use Option<") {
        e.message.truncate(i);
        e.message.push_str(" (the key needs a value)");
    }
    if e.message == "expected sequence start" {
        e.message = "expected a list here (lines starting with \"- \", or [a, b])".into();
    } else if e.message == "expected mapping start" {
        e.message = "expected keys here (\"key: value\" lines, or { key: value })".into();
    }
}

/// Parses YAML into the raw structs, or lists every type-level error of the file with its key
/// path and line.
pub fn parse_raw(yaml: &str, source: &str) -> Result<raw::RawConfig, ConfigErrors> {
    let mut text = yaml.to_owned();
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut blanked: Vec<String> = Vec::new();
    loop {
        let mut e = match parse_once(&text) {
            Ok(raw) if errors.is_empty() => return Ok(raw),
            Ok(_) => break,
            Err(e) => e,
        };
        // Blanking a file's last keys can leave nothing to parse: that is not the user's error.
        if !blanked.is_empty() && e.message.contains("unexpected end of input") {
            break;
        }
        if is_syntax_error(&e) {
            explain_syntax_error(&mut e, &text);
            errors.push(e);
            break;
        }
        // A mapping whose only (bad) key was blanked is now empty: a consequence, and parsing
        // can go no further from here.
        if blanked.iter().any(|b| is_below(b, &e.path)) {
            break;
        }
        // A required key left out (by the user, or by blanking a bad value of it): nothing to
        // blank that would let the parse go on.
        if e.message.starts_with("missing field `") {
            if !follows_from_blanking(&e, &blanked) {
                errors.push(e);
            }
            break;
        }
        explain_type_error(&mut e);
        let (line, col, path) = (e.line, e.column, e.path.clone());
        errors.push(e);
        let progressed = match (line, col) {
            (Some(l), Some(c)) => blank_flow_pair(&mut text, l, c) || blank_key(&mut text, l),
            (Some(l), None) => blank_key(&mut text, l),
            _ => false,
        };
        if !progressed || errors.len() >= MAX_ERRORS {
            break;
        }
        blanked.push(path);
    }
    for e in &mut errors {
        clamp_to_last_line(e, yaml);
    }
    Err(ConfigErrors {
        source: source.to_owned(),
        errors,
    })
}

/// The parser places an error at the end of input on the line after a final newline, which
/// the file does not have (an editor opens it at an empty line past the end). Point at the end
/// of the last line instead. Done once parsing is over: blanking works on the parser's lines.
fn clamp_to_last_line(e: &mut ConfigError, yaml: &str) {
    let lines = yaml.lines().count();
    if lines > 0 && e.line.is_some_and(|l| l > lines) {
        let last = yaml.lines().last().unwrap_or("");
        e.line = Some(lines);
        e.column = Some(last.chars().count() + 1);
    }
}
