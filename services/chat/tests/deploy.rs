//! The deployment files agree with the code: `docker-compose.yml` is valid,
//! `deploy/haproxy/haproxy.cfg` is valid, and every `CHAT_*` variable the
//! compose file hands one of our services is one that service's binary reads.
//! Every Redis the deploy files start is bounded (`--maxmemory`) with a
//! policy that evicts only keys with a TTL.
//!
//! No Docker engine is needed: only `docker-compose config` and `haproxy -c`
//! run. Both tools must be installed (scripts/services.sh installs them); a
//! missing tool fails the tests rather than skipping them.

#[path = "common/deploy_files.rs"]
mod deploy_files;

use deploy_files::{
    assert_bounded_redis, env_vars_in_help, help, repo_root, required_flags, run, text, unquote,
    BINARIES,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn compose_file() -> PathBuf {
    repo_root().join("docker-compose.yml")
}

fn haproxy_file() -> PathBuf {
    repo_root().join("deploy/haproxy/haproxy.cfg")
}

/// What an operator must set before `docker-compose up`: the file has no
/// default for it.
const OPERATOR_SECRET: &str = "an-operator-chose-this-secret-0123456789";

/// `docker-compose -f docker-compose.yml <args>`, from the repo root, with an
/// environment holding nothing but what the tool itself needs and the
/// operator's secret, so that every `${VAR:-default}` in the file resolves
/// to its default.
fn docker_compose(args: &[&str]) -> Output {
    docker_compose_env(args, OPERATOR_ENV)
}

/// Everything the compose file requires and has no default for.
const OPERATOR_ENV: &[(&str, &str)] = &[
    ("CHAT_INTERNAL_SECRET", OPERATOR_SECRET),
    ("CHAT_REDIS_PASSWORD", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
    ("CHAT_NATS_PASSWORD", "9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
    (
        "CHAT_KEY_ENCRYPTION_KEY",
        "5e2a9c0d7f3b1e6a8c4d2f0b9e7a5c3d",
    ),
];

/// [`docker_compose`] with exactly `env` set for the file.
fn docker_compose_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("docker-compose");
    cmd.arg("-f")
        .arg(compose_file())
        .args(args)
        .current_dir(repo_root())
        .env_clear();
    for var in ["PATH", "HOME", "LANG", "LC_ALL"] {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    cmd.envs(env.iter().copied());
    run(
        &mut cmd,
        "docker-compose",
        "Debian: apt-get install docker-compose",
    )
}

/// The compose file as `docker-compose config` resolves it (anchors merged,
/// variables substituted, keys normalised).
fn resolved_compose() -> String {
    let out = docker_compose(&["config"]);
    assert!(
        out.status.success(),
        "docker-compose config failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// One service of the resolved compose file, as far as these tests look.
#[derive(Debug, Default)]
struct Service {
    /// Whether it is built from our Dockerfile (so runs one of our binaries).
    built_here: bool,
    command: Vec<String>,
    environment: BTreeMap<String, String>,
    ports: Vec<String>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Reads the services out of `docker-compose config` output: block-style
/// YAML, two spaces per level, so a line-based reading is enough.
fn parse_services(yaml: &str) -> BTreeMap<String, Service> {
    let mut services = BTreeMap::new();
    let mut in_services = false;
    let mut service: Option<String> = None;
    let mut key = String::new();
    let mut key_indent = 0;
    for line in yaml.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let depth = indent(line);
        let body = line.trim();
        if depth == 0 {
            in_services = body == "services:";
            service = None;
            continue;
        }
        if !in_services {
            continue;
        }
        if depth == 2 {
            let name = body.trim_end_matches(':').to_owned();
            services.insert(name.clone(), Service::default());
            service = Some(name);
            key.clear();
            continue;
        }
        let Some(name) = &service else { continue };
        let svc = services.get_mut(name).expect("service was inserted");
        if depth == 4 && !body.starts_with("- ") {
            let (k, v) = body.split_once(':').unwrap_or((body, ""));
            key = k.to_owned();
            key_indent = depth;
            let v = v.trim();
            match key.as_str() {
                "build" => svc.built_here = true,
                "command" if !v.is_empty() => {
                    svc.command = unquote(v).split_whitespace().map(str::to_owned).collect();
                }
                _ => {}
            }
            continue;
        }
        // A line below the current key (lists may sit at the key's own indent).
        if depth < key_indent {
            continue;
        }
        match key.as_str() {
            "command" => {
                if let Some(item) = body.strip_prefix("- ") {
                    svc.command.push(unquote(item));
                }
            }
            "environment" => {
                if let Some(item) = body.strip_prefix("- ") {
                    let item = unquote(item);
                    let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                    svc.environment.insert(k.to_owned(), v.to_owned());
                } else if let Some((k, v)) = body.split_once(':') {
                    svc.environment.insert(unquote(k), unquote(v));
                }
            }
            "ports" => {
                if let Some(item) = body.strip_prefix("- ") {
                    svc.ports.push(unquote(item));
                } else if let Some(v) = body.strip_prefix("published:") {
                    svc.ports.push(unquote(v));
                }
            }
            _ => {}
        }
    }
    services
}

/// Our services in the resolved compose file, each with the binary it runs.
fn our_services() -> Vec<(String, String, Service)> {
    let services = parse_services(&resolved_compose());
    assert!(
        !services.is_empty(),
        "no services read from docker-compose config"
    );
    let mut ours = Vec::new();
    for (name, svc) in services {
        if !svc.built_here {
            continue;
        }
        let binary = svc
            .command
            .first()
            .cloned()
            .unwrap_or_else(|| "chat".to_owned());
        assert!(
            BINARIES.iter().any(|(b, _)| *b == binary),
            "service {name} runs {binary:?}, which is not one of our binaries"
        );
        ours.push((name, binary, svc));
    }
    ours
}

/// The port of an `host:port` address, or of a URL ending in one.
fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap_or("")
}

#[test]
fn the_compose_file_passes_docker_compose_config() {
    let out = docker_compose(&["config", "-q"]);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "docker-compose config -q failed ({}):\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("variable is not set"),
        "a variable in docker-compose.yml has no default:\n{stderr}"
    );
}

/// A secret that ships in a public file is no secret: anyone who reaches
/// auth's or room's gRPC port could act as any user.
/// The same for Redis's and NATS's passwords: both run with
/// authentication, with passwords only the operator knows.
#[test]
fn the_compose_file_has_no_secrets_of_its_own() {
    for (missing, _) in OPERATOR_ENV {
        let env: Vec<(&str, &str)> = OPERATOR_ENV
            .iter()
            .copied()
            .filter(|(k, _)| k != missing)
            .collect();
        let out = docker_compose_env(&["config", "-q"], &env);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "docker-compose config passed without {missing}:\n{stderr}"
        );
        assert!(stderr.contains(missing), "{stderr}");
    }
    let resolved = resolved_compose();
    for (var, value) in &OPERATOR_ENV[1..] {
        assert!(resolved.contains(value), "{var} is not used:\n{resolved}");
    }
    assert!(
        resolved.contains("--requirepass"),
        "Redis requires a password"
    );
    assert!(resolved.contains("--pass"), "NATS requires a password");
}

#[test]
fn the_compose_file_runs_the_whole_distributed_topology() {
    let services = parse_services(&resolved_compose());
    for name in [
        "postgres",
        "redis",
        "nats",
        "auth",
        "room-1",
        "room-2",
        "gateway-1",
        "gateway-2",
        "haproxy",
    ] {
        assert!(
            services.contains_key(name),
            "docker-compose.yml has no service {name}"
        );
    }
    let runs = |name: &str| services[name].command.first().cloned().unwrap_or_default();
    assert_eq!(runs("auth"), "auth");
    for name in ["room-1", "room-2"] {
        assert_eq!(runs(name), "room", "{name}");
    }
    for name in ["gateway-1", "gateway-2"] {
        assert_eq!(runs(name), "gateway", "{name}");
        assert!(
            services[name].built_here,
            "{name} is built from our Dockerfile"
        );
    }
    assert!(
        services["haproxy"].ports.iter().any(|p| p.contains("8080")),
        "haproxy publishes port 8080: {:?}",
        services["haproxy"].ports
    );
    // Every gateway reaches every room replica.
    for name in ["gateway-1", "gateway-2"] {
        let rooms = &services[name].environment["CHAT_ROOM_URL"];
        for room in ["room-1", "room-2"] {
            assert!(
                rooms.contains(&format!("//{room}:")),
                "{name}'s CHAT_ROOM_URL ({rooms}) lists {room}"
            );
        }
    }
}

#[test]
fn every_chat_variable_in_the_compose_file_is_one_its_binary_accepts() {
    let ours = our_services();
    assert!(
        ours.len() >= 5,
        "expected auth, two rooms and two gateways built from our Dockerfile, got {:?}",
        ours.iter().map(|(n, _, _)| n).collect::<Vec<_>>()
    );
    let mut helps = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, binary, svc) in &ours {
        let help = helps
            .entry(binary.clone())
            .or_insert_with(|| help(binary))
            .clone();
        let accepted = env_vars_in_help(&help);
        for var in svc.environment.keys().filter(|k| k.starts_with("CHAT_")) {
            if !accepted.contains_key(var) {
                problems.push(format!(
                    "service {name} sets {var}, which `{binary} --help` does not list"
                ));
            }
        }
        for flag in svc.command.iter().skip(1).filter(|a| a.starts_with("--")) {
            let flag = flag.split('=').next().unwrap_or(flag);
            if !help.contains(&format!("{flag} ")) {
                problems.push(format!(
                    "service {name} passes {flag}, which `{binary} --help` does not list"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_required_flag_of_our_services_is_set_in_the_compose_file() {
    let mut problems = Vec::new();
    for (name, binary, svc) in our_services() {
        let help = help(&binary);
        let vars = env_vars_in_help(&help);
        let given: BTreeSet<&str> = svc
            .command
            .iter()
            .filter(|a| a.starts_with("--"))
            .map(|a| a.split('=').next().unwrap_or(a))
            .collect();
        for flag in required_flags(&help) {
            let var = vars
                .iter()
                .find(|(_, f)| **f == flag)
                .map(|(v, _)| v.as_str());
            let set = given.contains(flag.as_str())
                || var.is_some_and(|v| svc.environment.contains_key(v));
            if !set {
                problems.push(format!(
                    "service {name} ({binary}) sets neither {flag} nor {}",
                    var.unwrap_or("its variable")
                ));
            }
        }
        // Inside a container a service must listen beyond loopback.
        for var in ["CHAT_HTTP_ADDR", "CHAT_GRPC_ADDR"] {
            if let Some(addr) = svc.environment.get(var) {
                if addr.starts_with("127.") || addr.starts_with("localhost") {
                    problems.push(format!("service {name} listens on loopback: {var}={addr}"));
                }
            }
        }
        if let Some(secret) = svc.environment.get("CHAT_INTERNAL_SECRET") {
            if secret != OPERATOR_SECRET {
                problems.push(format!(
                    "service {name}: CHAT_INTERNAL_SECRET is {secret:?}, not the operator's"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_haproxy_config_passes_haproxy_check() {
    let file = haproxy_file();
    let out = run(
        Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&file)
            .current_dir(repo_root()),
        "haproxy",
        "Debian: apt-get install haproxy",
    );
    assert!(
        out.status.success(),
        "haproxy -c -f {} failed ({}):\n{}{}",
        file.display(),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn haproxy_balances_over_the_gateways_of_the_compose_file() {
    let cfg = std::fs::read_to_string(haproxy_file()).expect("read haproxy.cfg");
    let services = parse_services(&resolved_compose());
    // `server NAME HOST:PORT ...` lines: the hosts are compose services.
    let servers: Vec<(String, String)> = cfg
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("server "))
        .filter_map(|l| {
            let addr = l.split_whitespace().nth(2)?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_owned(), port.to_owned()))
        })
        .collect();
    assert!(!servers.is_empty(), "haproxy.cfg has no server lines");
    for (host, port) in &servers {
        let svc = services
            .get(host)
            .unwrap_or_else(|| panic!("haproxy server {host} is not a compose service"));
        assert_eq!(
            svc.command.first().map(String::as_str),
            Some("gateway"),
            "haproxy server {host} is a gateway"
        );
        let listen = svc
            .environment
            .get("CHAT_HTTP_ADDR")
            .map_or("", String::as_str);
        assert_eq!(
            port_of(listen),
            port,
            "haproxy reaches {host} on port {port}, but it listens on {listen:?}"
        );
    }
    for (name, svc) in &services {
        if svc.command.first().map(String::as_str) == Some("gateway") {
            assert!(
                servers.iter().any(|(host, _)| host == name),
                "gateway {name} is missing from haproxy.cfg"
            );
        }
    }
    for needle in [
        "timeout tunnel",
        "option redispatch",
        "retries",
        "uri /healthz",
    ] {
        assert!(cfg.contains(needle), "haproxy.cfg has no {needle:?}");
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn every_redis_in_the_deploy_files_is_bounded_and_evicts_only_expiring_keys() {
    let services = parse_services(&resolved_compose());
    let mut seen = Vec::new();
    for (name, s) in &services {
        if name.contains("redis") || s.command.first().is_some_and(|c| c == "redis-server") {
            assert_bounded_redis(&format!("docker-compose.yml, {name}"), &s.command);
            seen.push(format!("docker-compose.yml, {name}"));
        }
    }

    // Scripts and manifests that start a redis-server themselves.
    let root = repo_root();
    for file in files_under(&root.join("deploy"))
        .into_iter()
        .chain(files_under(&root.join("scripts")))
    {
        let Ok(content) = std::fs::read_to_string(&file) else {
            continue;
        };
        let joined = content.replace("\\\n", " ");
        for line in joined.lines() {
            let words: Vec<String> = line.split_whitespace().map(unquote).collect();
            if words.first().is_some_and(|w| w == "redis-server") {
                let place = file.strip_prefix(&root).unwrap_or(&file).display();
                assert_bounded_redis(&place.to_string(), &words);
                seen.push(place.to_string());
            }
        }
    }
    for expected in ["docker-compose.yml, redis", "scripts/services.sh"] {
        assert!(
            seen.iter().any(|s| s == expected),
            "no redis-server found in {expected}: {seen:?}"
        );
    }
}
