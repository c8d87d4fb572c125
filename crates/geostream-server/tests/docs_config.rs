//! The documentation cannot drift from the code: every configuration key that README.md,
//! docs/PROTOCOL.md or docs/DEPLOY.md names exists in what `geostream serve --print-config`
//! prints (or, for the PostgreSQL store and the NATS broker, what `Config` gives those
//! variants), with the default the text states; every TOML example loads into `Config`
//! (unknown keys are errors); every environment variable named like `GEOSTREAM_SECTION__KEY` is a key; and
//! every close or error code the prose mentions is one of geostream-core's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use geostream_core::error::{CloseCode, ErrorCode};
use geostream_server::Config;
use regex::Regex;

const DOCS: &[&str] = &[
    "README.md",
    "docs/PROTOCOL.md",
    "docs/DEPLOY.md",
    "docs/GEOFENCES.md",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(doc: &str) -> String {
    std::fs::read_to_string(repo().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"))
}

/// `geostream serve --print-config` with `env` (and no other `GEOSTREAM_` variable).
fn print_config(args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_geostream"));
    cmd.arg("serve").arg("--print-config").args(args);
    cmd.current_dir(std::env::temp_dir());
    for (k, _) in std::env::vars() {
        if k.starts_with("GEOSTREAM_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run geostream");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let toml::Value::Table(t) = v {
            flatten(&key, t, out);
        } else {
            out.insert(key, v.clone());
        }
    }
}

/// A configuration from TOML text, as the server's `Config` reads it (serde defaults for
/// what the text leaves out, unknown keys refused), then checked as at startup.
fn load(text: &str) -> Result<Config, String> {
    let cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Every key with its default: what `geostream serve --print-config` prints, plus the keys of
/// the PostgreSQL store and the NATS broker (the other variants of `store` / `broker`, with
/// the defaults `Config` gives them).
fn defaults() -> BTreeMap<String, toml::Value> {
    let mut keys = BTreeMap::new();
    let printed = print_config(&[], &[]).expect("--print-config");
    let variants = [
        load("[store]\ntype = \"postgres\"\n").unwrap(),
        load("[broker]\ntype = \"nats\"\n").unwrap(),
    ];
    let texts =
        std::iter::once(printed).chain(variants.iter().map(|c| toml::to_string(c).unwrap()));
    for text in texts {
        let table: toml::Table = text.parse().expect("the configuration prints as TOML");
        let mut flat = BTreeMap::new();
        flatten("", &table, &mut flat);
        for (k, v) in flat {
            keys.entry(k).or_insert(v);
        }
    }
    keys.insert("store.type".into(), "sqlite".into());
    keys.insert("broker.type".into(), "memory".into());
    // Keys without a default (printed only when set).
    for k in ["auth.issuer", "auth.audience"] {
        keys.insert(k.into(), toml::Value::String(String::new()));
    }
    keys
}

/// Markdown as one line per paragraph, so a key and its default may sit on two lines.
fn joined(md: &str) -> String {
    md.replace('\n', " ")
}

/// A stated default in the key's own unit, or `None` when the text is no value.
fn stated_value(key: &str, number: &str, unit: &str) -> Option<f64> {
    let n: f64 = number.replace(',', "").parse().ok()?;
    let factor = match (unit, key) {
        ("", _) => 1.0,
        ("KiB", _) => 1024.0,
        ("MiB", _) => 1024.0 * 1024.0,
        ("ms", k) if k.ends_with("_ms") => 1.0,
        ("s" | "seconds", k) if k.ends_with("_ms") => 1000.0,
        ("min", k) if k.ends_with("_ms") => 60_000.0,
        ("s" | "seconds", k) if k.ends_with("_secs") => 1.0,
        ("min", k) if k.ends_with("_secs") => 60.0,
        ("ms", k) if k.ends_with("_secs") => 0.001,
        _ => return None,
    };
    Some(n * factor)
}

#[test]
fn every_documented_key_exists_with_its_stated_default() {
    let keys = defaults();
    let sections: Vec<String> = keys
        .keys()
        .filter_map(|k| k.split_once('.').map(|(s, _)| s.to_string()))
        .collect();
    // `section.key`, then what follows it: ` (default 25)`, ` (5)`, ` of JSON (default 65,536`,
    // `, default 1000`, ` messages, default 1000`, ` = 4096`, `, 60 s`, or an assignment
    // inside the backticks.
    let mention = Regex::new(r"`\[?([a-z_]+(?:\.[a-z_0-9]+)+)\]?(?: = ([^`]+))?`").unwrap();
    let default = Regex::new(
        r"^(?: (?:[A-Za-z]+ ){0,4}\((?:default:? )?| = |,? default |, | [a-z]+, default )(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?: ?(KiB|MiB|ms|s|seconds|min)\b)?",
    )
    .unwrap();
    let mut checked = (0, 0);
    let mut errors = Vec::new();
    for doc in DOCS {
        let text = joined(&read(doc));
        for m in mention.captures_iter(&text) {
            let key = &m[1];
            let section = key.split('.').next().unwrap();
            if !sections.iter().any(|s| s == section) {
                continue; // not configuration (`data.current`, `heartbeat.ping_interval_ms`)
            }
            checked.0 += 1;
            let Some(actual) = keys.get(key) else {
                errors.push(format!("{doc}: `{key}` is not a configuration key"));
                continue;
            };
            if let Some(assigned) = m.get(2) {
                // `store.type = "postgres"`: the setting must load.
                let (table, field) = key.rsplit_once('.').unwrap();
                let text = format!("[{table}]\n{field} = {}\n", assigned.as_str().trim());
                // A key of one `type` of store or broker loads in a table of that type: the
                // setting loads if it loads with any of them.
                let types: &[&str] = match table {
                    "store" if field != "type" => &["sqlite", "postgres"],
                    "broker" if field != "type" => &["memory", "nats"],
                    _ => &[],
                };
                let loads = std::iter::once(load(&text)).chain(
                    types
                        .iter()
                        .map(|t| load(&format!("{text}type = \"{t}\"\n"))),
                );
                if let Some(Err(e)) = loads.reduce(|a, b| a.or(b)) {
                    errors.push(format!(
                        "{doc}: `{key} = {}` does not load: {e}",
                        assigned.as_str()
                    ));
                }
                continue;
            }
            let after = &text[m.get(0).unwrap().end()..];
            if let Some(d) = default.captures(after) {
                let unit = d.get(2).map_or("", |u| u.as_str());
                let Some(stated) = stated_value(key, &d[1], unit) else {
                    errors.push(format!("{doc}: `{key}`: cannot read {:?}", &d[0]));
                    continue;
                };
                checked.1 += 1;
                let real = match actual {
                    toml::Value::Integer(i) => *i as f64,
                    toml::Value::Float(f) => *f,
                    other => {
                        errors.push(format!(
                            "{doc}: `{key}` states {stated}, the default is {other}"
                        ));
                        continue;
                    }
                };
                if (real - stated).abs() > 1e-9 {
                    errors.push(format!(
                        "{doc}: `{key}` states the default {} ({stated}), the code's is {real}",
                        &d[0].trim()
                    ));
                }
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // The documents name dozens of keys and state many defaults: the patterns above must
    // keep finding them (a test that reads nothing proves nothing).
    assert!(checked.0 >= 40, "only {} key mentions found", checked.0);
    assert!(checked.1 >= 20, "only {} stated defaults found", checked.1);
}

#[test]
fn toml_examples_load_and_environment_variables_are_keys() {
    let keys = defaults();
    let mut examples = 0;
    let mut errors = Vec::new();
    let env_var = Regex::new(r"GEOSTREAM_([A-Z0-9_]+?)(?:=([^` )]*))?[` )]").unwrap();
    for doc in DOCS {
        let md = read(doc);
        let mut block: Option<String> = None;
        for line in md.lines() {
            match (&mut block, line.trim_start()) {
                (None, "```toml") => block = Some(String::new()),
                (Some(b), "```") => {
                    if let Err(e) = load(b) {
                        errors.push(format!("{doc}: a TOML example does not load: {e}\n{b}"));
                    }
                    examples += 1;
                    block = None;
                }
                (Some(b), _) => {
                    b.push_str(line);
                    b.push('\n');
                }
                _ => {}
            }
        }
        for m in env_var.captures_iter(&md) {
            let name = &m[1];
            if ["CONFIG", "SERVER", "TOKEN", "TOKEN_SECRET"].contains(&name)
                || name.starts_with("TEST_")
                || name.contains('<')
            {
                continue; // not configuration keys
            }
            let key = name.to_lowercase().replace("__", ".");
            if !keys.contains_key(&key) {
                errors.push(format!("{doc}: GEOSTREAM_{name} names no key ({key})"));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(
        examples >= 1,
        "DEPLOY.md's node configuration is a TOML example"
    );
}

#[test]
fn close_and_error_codes_in_the_prose_are_the_cores() {
    // "closes ... with 4000", "close code 4008", "code 1012": WebSocket close codes.
    let close = Regex::new(r"(?i)(?:close code|clos\w* (?:the connection |every WebSocket |its WebSockets )?with(?: code)?|code) (\d{4})\b").unwrap();
    let pair = Regex::new(r"`([a-z_]+)` \((-?\d{4,5})\)").unwrap();
    let mut seen = 0;
    let mut errors = Vec::new();
    for doc in DOCS {
        let text = joined(&read(doc));
        for m in close.captures_iter(&text) {
            let code: u16 = m[1].parse().unwrap();
            seen += 1;
            let known = CloseCode::ALL.iter().any(|c| c.code() == code)
                || ErrorCode::ALL.iter().any(|c| c.code() == i32::from(code));
            if !known {
                errors.push(format!("{doc}: {:?} is no close or error code", &m[0]));
            }
        }
        // `name` (code) pairs: "`conflict` (3005)", "`idle_timeout` (4000)".
        for m in pair.captures_iter(&text) {
            let (name, code): (&str, i32) = (&m[1], m[2].parse().unwrap());
            seen += 1;
            let ok = ErrorCode::ALL
                .iter()
                .any(|c| c.name() == name && c.code() == code)
                || CloseCode::ALL
                    .iter()
                    .any(|c| c.name() == name && i32::from(c.code()) == code);
            if !ok {
                errors.push(format!(
                    "{doc}: `{name}` ({code}) is not a code of geostream-core"
                ));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(seen >= 3, "only {seen} code mentions found");
}
