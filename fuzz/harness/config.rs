//! The config file parser and validator, fed arbitrary bytes as a file.

use tenantgate::config::{Overrides, from_yaml};
use tenantgate::route::normalize_path;

pub fn run(data: &[u8]) {
    // A config file is read as UTF-8 text; other bytes fail before the parser sees them.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `--syntax-only`: referenced files and environment variables are not read, so an input
    // naming /dev/zero or a secret variable reads nothing.
    let overrides = Overrides {
        syntax_only: true,
        ..Overrides::default()
    };
    match from_yaml(text, "fuzz.yaml", &overrides) {
        Ok(config) => {
            for r in &config.routes {
                let p = r.path.as_str();
                assert!(
                    matches!(normalize_path(p), Ok(n) if n == p),
                    "route {} loaded with a path that is not normal: {p:?}",
                    r.name
                );
            }
        }
        Err(e) => {
            assert!(
                !e.errors.is_empty(),
                "a config error without a single error listed"
            );
            // Lines as YAML counts them: LF, CRLF, and a lone CR each end one. The parser puts
            // an error at the end of input on the line after the last when the file does not
            // end in a line break (fuzz/regressions/config/end-of-input-after-the-last-line).
            let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() + 2;
            for err in &e.errors {
                assert!(
                    err.line.is_none_or(|l| l <= lines),
                    "error at line {:?} of a {lines}-line file: {err:?}",
                    err.line
                );
            }
            // The message is what a user reads: building it must not panic either.
            let _ = e.to_string();
        }
    }
}
