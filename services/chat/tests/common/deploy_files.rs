//! What the tests of the deployment files share (`tests/deploy.rs` for
//! docker-compose and HAProxy, `tests/k8s.rs` for the Kubernetes manifests):
//! our binaries and what their `--help` accepts, running an outside tool
//! (a missing one fails the test with an install hint, never skips it), and
//! the bounds every Redis we start must have.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Our binaries, by name, as built for this test binary.
pub const BINARIES: [(&str, &str); 4] = [
    ("chat", env!("CARGO_BIN_EXE_chat")),
    ("auth", env!("CARGO_BIN_EXE_auth")),
    ("room", env!("CARGO_BIN_EXE_room")),
    ("gateway", env!("CARGO_BIN_EXE_gateway")),
];

pub fn repo_root() -> PathBuf {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    root.canonicalize()
        .unwrap_or_else(|e| panic!("repo root {}: {e}", root.display()))
}

/// Runs `cmd`, failing the test with an install hint when the tool is missing.
pub fn run(cmd: &mut Command, tool: &str, hint: &str) -> Output {
    match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{tool} is not installed ({hint}); these tests need it")
        }
        Err(e) => panic!("running {tool}: {e}"),
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn unquote(s: &str) -> String {
    let s = s.trim();
    let quoted = s.len() >= 2
        && ((s.starts_with('\'') && s.ends_with('\'')) || (s.starts_with('"') && s.ends_with('"')));
    if quoted {
        s[1..s.len() - 1].to_owned()
    } else {
        s.to_owned()
    }
}

/// A binary's `--help`, run with no `CHAT_*` variables set.
pub fn help(binary: &str) -> String {
    let path = BINARIES
        .iter()
        .find(|(name, _)| *name == binary)
        .map(|(_, path)| *path)
        .unwrap_or_else(|| panic!("{binary:?} is not one of our binaries"));
    let out = run(
        Command::new(path).arg("--help").env_clear(),
        binary,
        "cargo build -p chat --bins",
    );
    assert!(
        out.status.success(),
        "{binary} --help failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The `CHAT_*` variables a binary's help names, each with its `--flag`.
pub fn env_vars_in_help(help: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let mut flag = String::new();
    for line in help.lines() {
        let body = line.trim_start();
        let body = body.split_once(", ").map_or(body, |(short, long)| {
            if short.starts_with('-') && long.starts_with("--") {
                long
            } else {
                body
            }
        });
        if let Some(rest) = body.strip_prefix("--") {
            flag = format!("--{}", rest.split_whitespace().next().unwrap_or(""));
        }
        let mut rest = line;
        while let Some(at) = rest.find("[env: ") {
            rest = &rest[at + "[env: ".len()..];
            let end = rest.find(['=', ']']).unwrap_or(rest.len());
            vars.insert(rest[..end].to_owned(), flag.clone());
        }
    }
    vars
}

/// The `--flags` the `Usage:` line of a help marks as required.
pub fn required_flags(help: &str) -> Vec<String> {
    let usage = help
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .expect("help has a Usage: line");
    usage
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(str::to_owned)
        .collect()
}

/// The value after `flag` in a `redis-server` command line.
pub fn redis_flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

/// A Redis of ours must be bounded, and evict only keys with a TTL: the
/// revocation list has none (so it is never evicted, and no session is
/// un-revoked), every other key has one. `noeviction` would refuse writes
/// (revocations too) when full; `allkeys-*` could evict the revocations.
pub fn assert_bounded_redis(place: &str, args: &[String]) {
    let max = redis_flag(args, "--maxmemory")
        .unwrap_or_else(|| panic!("{place}: redis-server without --maxmemory: {args:?}"));
    let digits: String = max.chars().take_while(char::is_ascii_digit).collect();
    assert!(
        digits.parse::<u64>().is_ok_and(|n| n > 0),
        "{place}: --maxmemory {max:?} must be a positive size"
    );
    let policy = redis_flag(args, "--maxmemory-policy")
        .unwrap_or_else(|| panic!("{place}: redis-server without --maxmemory-policy: {args:?}"));
    assert!(
        ["volatile-lru", "volatile-lfu"].contains(&policy),
        "{place}: --maxmemory-policy {policy} (want volatile-lru: see docs/deploy.md)"
    );
}
