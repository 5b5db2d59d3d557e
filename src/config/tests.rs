use super::*;

fn load_str(yaml: &str) -> Result<Config, ConfigErrors> {
    from_yaml(yaml, "test.yaml", &Overrides::default())
}

fn first_error(yaml: &str) -> String {
    match load_str(yaml) {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(e) => e.to_string().lines().next().unwrap_or_default().to_owned(),
    }
}

const MINIMAL: &str = "upstreams:\n  mimir:\n    url: http://mimir:8080\nroutes:\n  - name: all\n    match: { path_prefix: / }\n    upstream: mimir\n    tenant: team-a\n";

#[test]
fn the_smallest_useful_file_is_an_upstream_and_a_route() {
    let c = load_str(MINIMAL).unwrap();
    assert_eq!(c.server.listen, vec!["127.0.0.1:9090".parse().unwrap()]);
    assert!(c.admin.is_none());
    let u = &c.upstreams["mimir"];
    assert_eq!(u.origin.to_string(), "http://mimir:8080/");
    assert_eq!(u.timeouts.connect, Duration::from_secs(5));
    assert_eq!(c.routes[0].max_request_body, 100 << 20);
}

#[test]
fn the_builtin_default_is_the_dev_shim() {
    let c = load(None, &Overrides::default()).unwrap();
    assert_eq!(c.source, BUILTIN_NAME);
    assert_eq!(c.server.listen, vec!["127.0.0.1:9090".parse().unwrap()]);
    assert_eq!(
        c.upstreams["mimir"].origin.to_string(),
        "http://127.0.0.1:8080/"
    );
    assert!(c.routes.iter().all(|r| r.tenant.describe() == "anonymous"));
    let prom = c.routes.iter().find(|r| r.prometheus.is_some()).unwrap();
    assert_eq!(prom.path.as_str(), "/prometheus");
}

#[test]
fn command_line_overrides_apply_before_validation() {
    let o = Overrides {
        upstream: Some("http://localhost:9009".into()),
        tenant: Some("dev".into()),
        listen: Some(":8000".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        ..Overrides::default()
    };
    let c = load(None, &o).unwrap();
    assert_eq!(
        c.upstreams["mimir"].origin.to_string(),
        "http://localhost:9009/"
    );
    assert!(c.routes.iter().all(|r| r.tenant.describe() == "dev"));
    assert_eq!(c.server.listen, vec!["0.0.0.0:8000".parse().unwrap()]);
    assert_eq!(
        c.admin.unwrap().listen,
        vec!["127.0.0.1:0".parse().unwrap()]
    );

    let bad = Overrides {
        tenant: Some("a|b".into()),
        ..Default::default()
    };
    let e = load(None, &bad).unwrap_err().to_string();
    assert!(
        e.contains("<built-in config>: --tenant (sets routes[0].tenant): \"a|b\" is not a valid tenant ID: '|' is not allowed"),
        "{e}"
    );
    // A bad value from a flag is blamed on the flag, not on a line of the file.
    let bad = Overrides {
        upstream: Some("not a url".into()),
        listen: Some("nope".into()),
        admin_listen: Some("x:y".into()),
        ..Default::default()
    };
    let e = load(None, &bad).unwrap_err();
    let paths: Vec<(&str, Option<usize>)> =
        e.errors.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(
        paths,
        [
            ("--listen (sets server.listen)", None),
            ("--admin-listen (sets admin.listen)", None),
            ("--upstream (sets upstreams.mimir.url)", None),
        ],
        "{e}"
    );
}

#[test]
fn an_error_at_the_end_of_the_file_points_at_its_last_line() {
    // An unclosed quote runs to the end of input. Without a final newline the parser points at
    // the quote; with one, at a line 10 the file does not have: that becomes the last line's end.
    let yaml = format!("{}\n    rewrite: \"/x", MINIMAL.trim_end());
    assert_eq!(yaml.lines().count(), 9);
    assert_eq!(yaml.lines().last().map(str::len), Some(16));
    let err = first_error(&yaml);
    assert!(err.starts_with("test.yaml:9:14: "), "{err}");
    let err = first_error(&format!("{yaml}\n"));
    assert!(err.starts_with("test.yaml:9:17: "), "{err}");
}

#[test]
fn unknown_keys_name_the_key_path_and_line() {
    let yaml =
        "upstreams:\n  mimir:\n    url: http://m\n    timeouts:\n      conect: 5s\nroutes: []\n";
    assert_eq!(
        first_error(yaml),
        "test.yaml:5:7: upstreams.mimir.timeouts.conect: unknown field `conect`, expected one of connect, response_header, idle"
    );
    let yaml = MINIMAL.replace(
        "    tenant: team-a\n",
        "    tenant: team-a\n    tenants: x\n",
    );
    assert!(
        first_error(&yaml).starts_with("test.yaml:9:5: routes[0].tenants: unknown field `tenants`"),
        "{}",
        first_error(&yaml)
    );
}

#[test]
fn a_label_named_value_keeps_its_name_in_errors() {
    let yaml = MINIMAL.replace(
        "tenant: team-a",
        "tenant: team-a\n    prometheus:\n      external_labels: { value: [1] }\n",
    );
    assert!(
        first_error(&yaml).contains("routes[0].prometheus.external_labels.value: "),
        "{}",
        first_error(&yaml)
    );
}

#[test]
fn bad_values_name_the_key_path_and_line() {
    let yaml = MINIMAL.replace(
        "url: http://mimir:8080",
        "url: http://mimir:8080\n    timeouts: { connect: 5 minutes }",
    );
    assert_eq!(
        first_error(&yaml),
        "test.yaml:4:26: upstreams.mimir.timeouts.connect: \"5 minutes\" is not a duration (use e.g. 30s, 5m, 1h30m, 400d)"
    );
    let yaml = MINIMAL.replace(
        "tenant: team-a",
        "tenant: team-a\n    max_request_body: lots",
    );
    assert!(
        first_error(&yaml).contains("routes[0].max_request_body: \"lots\" is not a size"),
        "{}",
        first_error(&yaml)
    );
}

#[test]
fn unknown_upstream_lists_the_known_ones() {
    let yaml = format!(
        "{MINIMAL}  - name: second\n    match: {{ path: /x }}\n    upstream: mimri\n    tenant: t\n"
    );
    assert_eq!(
        first_error(&yaml),
        "test.yaml:11:15: routes[1].upstream: unknown upstream \"mimri\" (known: mimir)"
    );
}

#[test]
fn federated_fixed_tenant_is_refused() {
    let yaml = MINIMAL.replace("tenant: team-a", "tenant: \"a|b\"");
    assert_eq!(
        first_error(&yaml),
        "test.yaml:8:13: routes[0].tenant: \"a|b\" is not a valid tenant ID: '|' is not allowed (tenant federation is off for this route)"
    );
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let yaml = "upstreams:\n  mimir:\n    url: ftp://x\nroutes:\n  - name: a\n    match: { path: /a/../b }\n    upstream: nope\n    tenant: \"\"\n";
    let e = load_str(yaml).unwrap_err();
    let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "upstreams.mimir.url",
            "routes[0].match.path",
            "routes[0].upstream",
            "routes[0].tenant"
        ],
        "{e}"
    );
}

#[test]
fn route_matches_are_checked() {
    let both = MINIMAL.replace("{ path_prefix: / }", "{ path: /a, path_prefix: /a }");
    assert!(
        first_error(&both).contains("routes[0].match: set either path or path_prefix, not both")
    );
    let none = MINIMAL.replace("{ path_prefix: / }", "{ methods: [GET] }");
    assert!(first_error(&none).contains("routes[0].match: set path (exact) or path_prefix"));
    let unnormal = MINIMAL.replace("{ path_prefix: / }", "{ path_prefix: \"/%70rometheus\" }");
    assert!(
        first_error(&unnormal).contains("is not in normal form; write \"/prometheus\""),
        "{}",
        first_error(&unnormal)
    );
    let method = MINIMAL.replace("{ path_prefix: / }", "{ path_prefix: /, methods: [get] }");
    assert!(
        first_error(&method).contains("routes[0].match.methods: \"get\" is not an HTTP method")
    );
    let dup = format!(
        "{MINIMAL}  - name: again\n    match: {{ path_prefix: / }}\n    upstream: mimir\n    tenant: t\n"
    );
    assert!(
        first_error(&dup).contains("routes[1].match: an earlier route has the same match"),
        "{}",
        first_error(&dup)
    );
    let dup_name = format!(
        "{MINIMAL}  - name: all\n    match: {{ path: /x }}\n    upstream: mimir\n    tenant: t\n"
    );
    assert!(first_error(&dup_name).contains("routes[1].name: duplicate route name \"all\""));
}

#[test]
fn every_type_level_mistake_is_listed_at_once() {
    // Four mistakes of different kinds: each names its key and line, none hides another, and
    // working around one (leaving its key out) invents no error of its own.
    let yaml = "upstreams:\n  mimir:\n    url: http://mimir:8080\n    timeouts: { connect: 5x }\nroutes:\n  - name: all\n    match: { path_prefix: / }\n    upstream: mimir\n    tenant: team-a\n    colour: blue\n  - name: two\n    match: { path_prefix: /two, methods: 3 }\n    upstream: mimir\n    tenant: team-b\nserver:\n  shutdown_grace: soon\n";
    let e = load_str(yaml).unwrap_err();
    let got: Vec<(&str, Option<usize>)> =
        e.errors.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(
        got,
        [
            ("upstreams.mimir.timeouts.connect", Some(4)),
            ("routes[0].colour", Some(10)),
            ("routes[1].match.methods", Some(12)),
            ("server.shutdown_grace", Some(16)),
        ],
        "{e}"
    );
    assert!(e.errors[2].message.contains("expected a list here"), "{e}");
    // A required key with an empty value: one error, not a cascade up to the document.
    let empty = MINIMAL.replace("url: http://mimir:8080", "url: null");
    let e = load_str(&empty).unwrap_err();
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(e.errors[0].path, "upstreams.mimir.url");
    assert!(!e.errors[0].message.contains("Option<"), "{e}");
}

#[test]
fn a_misindented_key_is_named_with_what_yaml_expected() {
    let yaml = MINIMAL.replace("    upstream: mimir", "     upstream: mimir");
    let e = load_str(&yaml).unwrap_err();
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(e.errors[0].path, "routes[0].upstream", "{e}");
    assert_eq!(e.errors[0].line, Some(7), "{e}");
    assert!(
        e.errors[0]
            .message
            .contains("line up with the keys around it"),
        "{e}"
    );
}

#[test]
fn a_label_split_route_is_bounded_and_on_one_exact_path() {
    let route = |m: &str, t: &str| {
        MINIMAL
            .replace("{ path_prefix: / }", m)
            .replace("tenant: team-a", t)
    };
    let ok = route(
        "{ path: /api/v1/push }",
        "tenant: { from: label, labels: [team], allow: [a] }",
    );
    assert!(load_str(&ok).is_ok(), "{:?}", load_str(&ok).err());
    let prefix = route(
        "{ path_prefix: / }",
        "tenant: { from: label, labels: [team], allow: [a] }",
    );
    assert!(
        first_error(&prefix).contains("needs an exact match.path"),
        "{}",
        first_error(&prefix)
    );
    let open = route(
        "{ path: /api/v1/push }",
        "tenant: { from: label, labels: [team] }",
    );
    assert!(
        first_error(&open).contains("bound it with `allow`"),
        "{}",
        first_error(&open)
    );
    let bad_label = route(
        "{ path: /api/v1/push }",
        "tenant: { from: label, labels: [\"team-x\"], allow: [a] }",
    );
    assert!(
        first_error(&bad_label).contains("not a label"),
        "{}",
        first_error(&bad_label)
    );
    let default_outside = route(
        "{ path: /api/v1/push }",
        "tenant: { from: label, labels: [team], allow: [a], default: b }",
    );
    assert!(first_error(&default_outside).contains("not in the allow list"));
}

#[test]
fn a_whole_path_rewrite_goes_with_an_exact_match_alone() {
    let ok = MINIMAL.replace(
        "    match: { path_prefix: / }\n",
        "    match: { path: /api/v1/push }\n    rewrite: { path: /api/v1/write }\n",
    );
    let c = load_str(&ok).unwrap();
    assert_eq!(c.routes[0].rewrite.path.as_deref(), Some("/api/v1/write"));
    let prefix = MINIMAL.replace(
        "    match: { path_prefix: / }\n",
        "    match: { path_prefix: /api }\n    rewrite: { path: /api/v1/write }\n",
    );
    assert!(
        first_error(&prefix).contains(
            "routes[0].rewrite.path: replaces the whole path, so it goes with an exact match.path"
        ),
        "{}",
        first_error(&prefix)
    );
    let mixed = ok.replace(
        "{ path: /api/v1/write }",
        "{ path: /api/v1/write, add_prefix: /x }",
    );
    assert!(
        first_error(&mixed).contains("give it alone"),
        "{}",
        first_error(&mixed)
    );
    let unnormal = ok.replace("{ path: /api/v1/write }", "{ path: api/v1/write }");
    assert!(
        first_error(&unnormal).contains("normalized path"),
        "{}",
        first_error(&unnormal)
    );
}

#[test]
fn upstream_urls_are_checked() {
    for (url, want) in [
        ("mimir:8080", "must start with http:// or https://"),
        ("http://user:pw@mimir", "must not contain credentials"),
        ("http://mimir?x=1", "must not have a query string"),
    ] {
        let yaml = MINIMAL.replace("http://mimir:8080", url);
        assert!(
            first_error(&yaml).contains(want),
            "{url}: {}",
            first_error(&yaml)
        );
    }
    let base = load_str(&MINIMAL.replace("http://mimir:8080", "https://mimir/base/")).unwrap();
    assert_eq!(base.upstreams["mimir"].base_path, "/base");
    let zero = MINIMAL.replace(
        "url: http://mimir:8080",
        "url: http://m\n    timeouts: { idle: 0s }",
    );
    assert!(
        first_error(&zero).contains("upstreams.mimir.timeouts.idle: must be > 0, got 0s"),
        "{}",
        first_error(&zero)
    );
}

#[test]
fn idle_upstream_connections_are_bounded_by_default() {
    let default = load_str(MINIMAL).unwrap();
    assert_eq!(default.upstreams["mimir"].max_idle_connections, 64);
    let none = MINIMAL.replace(
        "url: http://mimir:8080",
        "url: http://mimir:8080\n    max_idle_connections: 0",
    );
    assert_eq!(
        load_str(&none).unwrap().upstreams["mimir"].max_idle_connections,
        0
    );
    let negative = MINIMAL.replace(
        "url: http://mimir:8080",
        "url: http://mimir:8080\n    max_idle_connections: -1",
    );
    assert!(
        first_error(&negative).contains("max_idle_connections"),
        "{}",
        first_error(&negative)
    );
}

#[test]
fn prometheus_blocks_are_checked() {
    let with = |block: &str| {
        MINIMAL.replace(
            "tenant: team-a",
            &format!("tenant: team-a\n    prometheus:\n{block}"),
        )
    };
    let ok = load_str(&with("      external_labels: { cluster: eu }\n      version: 2.45.1\n      lowest_timestamp: 400d\n")).unwrap();
    let e = ok.routes[0].prometheus.as_ref().unwrap();
    assert_eq!(e.version, "2.45.1");
    assert_eq!(
        e.lowest_timestamp,
        crate::promapi::LowestTimestamp::Ago(Duration::from_secs(400 * 86400))
    );
    let at = load_str(&with(
        "      external_labels: { cluster: eu }\n      lowest_timestamp: 2024-01-01T00:00:00Z\n",
    ))
    .unwrap();
    assert_eq!(
        at.routes[0].prometheus.as_ref().unwrap().lowest_timestamp,
        crate::promapi::LowestTimestamp::At(1_704_067_200_000)
    );

    assert!(
        first_error(&with("      external_labels: {}\n"))
            .contains("at least one external label is needed")
    );
    assert!(
        first_error(&with("      external_labels: { __x: a }\n"))
            .contains("prometheus.external_labels.__x: \"__x\" is reserved")
    );
    assert!(
        first_error(&with("      external_labels: { a: \"\" }\n"))
            .contains("label values must not be empty")
    );
    assert!(
        first_error(&with(
            "      external_labels: { a: b }\n      version: v2.53.0\n"
        ))
        .contains("prometheus.version: \"v2.53.0\" is not a strict semver")
    );
    assert!(
        first_error(&with(
            "      external_labels: { a: b }\n      lowest_timestamp: yesterday\n"
        ))
        .contains("neither an RFC 3339 time")
    );
    let exact =
        with("      external_labels: { a: b }\n").replace("{ path_prefix: / }", "{ path: /x }");
    assert!(first_error(&exact).contains("use match.path_prefix"));
}

#[test]
fn listen_takes_one_address_or_a_list() {
    let one = load_str(&format!("server:\n  listen: \":9090\"\n{MINIMAL}")).unwrap();
    assert_eq!(one.server.listen, vec!["0.0.0.0:9090".parse().unwrap()]);
    let two = load_str(&format!(
        "server:\n  listen: [\"127.0.0.1:1\", \"[::1]:2\"]\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(two.server.listen.len(), 2);
    assert!(
        first_error(&format!("server:\n  listen: nowhere\n{MINIMAL}"))
            .contains("server.listen: \"nowhere\" is not a listen address")
    );
}

#[test]
fn hostile_yaml_fails_fast_with_an_error() {
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
    assert!(load_str(bomb).is_err());
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(load_str(&deep).is_err());
    assert!(load_str("").is_err());
    assert!(load_str("---\na: 1\n---\nb: 2\n").is_err());
}

#[test]
fn a_broken_identity_is_reported_once_not_again_on_every_route() {
    let yaml = MINIMAL.replace(
        "    tenant: team-a\n",
        "    tenant: { from: identity, identities: [bot] }\n",
    ) + "identities:\n  - name: bot\n    tenant: team-a\n    bearer_token: { file: /nonexistent/token }\n";
    let e = load_str(&yaml).unwrap_err();
    let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["identities[0].bearer_token.file"], "{e}");
    let typo = yaml.replace("identities: [bot]", "identities: [bto]");
    assert!(
        load_str(&typo)
            .unwrap_err()
            .to_string()
            .contains("unknown identity \"bto\" (known: bot)")
    );
}

fn with_server(extra: &str) -> Config {
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n{extra}upstreams:\n  a: {{ url: \"http://127.0.0.1:1\" }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: a, tenant: t }}\n"
    );
    from_yaml(&yaml, "test.yaml", &Overrides::default()).unwrap()
}

#[test]
fn a_reload_names_the_settings_that_wait_for_a_restart() {
    let old = with_server("");
    assert!(old.start_only_changes(&with_server("")).is_empty());
    let new = with_server("  send_timeout: 5s\n  max_requests_in_flight: 7\n");
    assert_eq!(
        old.start_only_changes(&new),
        ["server.send_timeout", "server.max_requests_in_flight"]
    );
}
