//! `docs/openapi.yaml` cannot drift from the router: every route the HTTP
//! listener serves (read from the router source of `src/http.rs` and
//! `src/ui.rs`) must be described there with the same methods, and every
//! path and method described there must be served.

use std::collections::BTreeSet;

const ROUTER_SOURCES: [(&str, &str); 2] = [
    ("src/http.rs", include_str!("../src/http.rs")),
    ("src/ui.rs", include_str!("../src/ui.rs")),
];

const OPENAPI: &str = include_str!("../../../docs/openapi.yaml");

const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

/// The text inside the parentheses opened just before `s`, and what follows them.
fn balanced(s: &str) -> (&str, &str) {
    let mut depth = 1;
    let mut in_str = false;
    let mut escaped = false;
    for (i, ch) in s.char_indices() {
        if in_str {
            match ch {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match ch {
            '"' => in_str = true,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return (&s[..i], &s[i + 1..]);
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses in the router source");
}

/// `(method, path)` of every `.route("path", get(..).post(..))` in `src`:
/// the methods are the calls at the top level of the second argument.
fn routes_in(src: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut rest = src;
    while let Some(i) = rest.find(".route(") {
        let (args, after) = balanced(&rest[i + ".route(".len()..]);
        rest = after;
        let args = args.trim_start();
        let path_text = args
            .strip_prefix('"')
            .expect("a route path is a string literal");
        let end = path_text.find('"').expect("the path literal ends");
        let path = &path_text[..end];
        let mut handlers = path_text[end + 1..].trim_start();
        handlers = handlers
            .strip_prefix(',')
            .expect("a comma after the path")
            .trim_start();
        // Walk the method chain at depth 0: `ident(...)` joined by `.`.
        let mut found = 0;
        loop {
            let name_end = handlers
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(handlers.len());
            let name = &handlers[..name_end];
            let Some(after_name) = handlers[name_end..].trim_start().strip_prefix('(') else {
                break;
            };
            assert!(
                METHODS.contains(&name),
                "route {path}: {name:?} is not an HTTP method router"
            );
            out.insert((name.to_uppercase(), path.to_string()));
            found += 1;
            let (_, after_call) = balanced(after_name);
            match after_call.trim_start().strip_prefix('.') {
                Some(next) => handlers = next.trim_start(),
                None => break,
            }
        }
        assert!(found > 0, "route {path}: no method found");
    }
    out
}

/// `(method, path)` of every operation under `paths:` in the OpenAPI file.
fn routes_in_openapi(yaml: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut in_paths = false;
    let mut path: Option<String> = None;
    for line in yaml.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            in_paths = line.trim_end() == "paths:";
            path = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        let key = line.trim().split(':').next().unwrap_or_default();
        if indent == 2 {
            assert!(key.starts_with('/'), "paths: {key:?} is not a path");
            path = Some(key.trim_matches('"').to_string());
        } else if indent == 4 && METHODS.contains(&key) {
            let p = path.clone().expect("a method under a path");
            out.insert((key.to_uppercase(), p));
        }
    }
    out
}

#[test]
fn the_router_source_is_parsed() {
    let routes = routes_in(
        r#"Router::new().route("/a", get(|| async { "ok\n" })).route(
            "/b/{x}",
            post(make).get(show).delete(drop_it),
        ).with_state(s)"#,
    );
    let want: BTreeSet<(String, String)> = [
        ("GET", "/a"),
        ("POST", "/b/{x}"),
        ("GET", "/b/{x}"),
        ("DELETE", "/b/{x}"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(routes, want);
}

#[test]
fn every_route_is_in_openapi_yaml_and_every_documented_route_is_served() {
    let mut served = BTreeSet::new();
    for (file, src) in ROUTER_SOURCES {
        let routes = routes_in(src);
        assert!(!routes.is_empty(), "no routes found in {file}");
        for r in routes {
            assert!(served.insert(r.clone()), "{r:?} is routed twice ({file})");
        }
    }
    // Sanity: the parse found what the README lists.
    for must in [
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("POST", "/v1/groups/{group}/dead-letters/{offset}/redrive"),
        ("PUT", "/v1/groups/{group}/policy"),
        ("GET", "/ui/"),
        ("GET", "/v1/stats/history"),
    ] {
        assert!(
            served.contains(&(must.0.to_string(), must.1.to_string())),
            "{must:?} not found in the router source"
        );
    }
    let documented = routes_in_openapi(OPENAPI);
    let missing: Vec<_> = served.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/openapi.yaml drifted from the router:\n  served but not documented: {missing:?}\n  documented but not served: {stale:?}"
    );
}

#[test]
fn openapi_yaml_declares_version_3_1_and_the_error_schema() {
    assert!(OPENAPI.starts_with("openapi: 3.1."), "OpenAPI 3.1 expected");
    assert!(
        OPENAPI.contains("\n    Error:\n"),
        "the Error schema is described"
    );
}
