//! Printing: aligned tables for people, JSON for scripts, and times.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Prints rows under headers, each column as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count();
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(headers.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

/// Prints `v` as indented JSON (for `--json`).
pub fn json(v: &Value) -> super::CliResult {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A JSON field as display text: strings bare, null as "-".
pub fn text(v: &Value, key: &str) -> String {
    show(v.get(key).unwrap_or(&Value::Null))
}

pub fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(show).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

pub fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Milliseconds since the epoch as an RFC 3339 UTC time.
pub fn time_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

/// How long ago `ms` (epoch milliseconds) was, e.g. `3m 12s`.
pub fn age_ms(ms: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    if ms <= 0 || ms > now {
        return "-".into();
    }
    let secs = ((now - ms) / 1000) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// A progress line on stderr, overwritten in place, for long operations.
pub struct Progress {
    label: &'static str,
    last: std::time::Instant,
    shown: bool,
    quiet: bool,
}

impl Progress {
    /// `quiet` (JSON output, or stderr not a terminal) prints nothing.
    pub fn new(label: &'static str, quiet: bool) -> Self {
        use std::io::IsTerminal as _;
        Progress {
            label,
            last: std::time::Instant::now(),
            shown: false,
            quiet: quiet || !std::io::stderr().is_terminal(),
        }
    }

    pub fn tick(&mut self, done: u64, total: Option<u64>) {
        if self.quiet || self.last.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last = std::time::Instant::now();
        self.shown = true;
        match total {
            Some(t) => eprint!("\r{} {done}/{t}", self.label),
            None => eprint!("\r{} {done}", self.label),
        }
    }

    pub fn finish(&mut self) {
        if self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}
