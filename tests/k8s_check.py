#!/usr/bin/env python3
"""Check the deployment and client configuration files under config/.

Run by tests/e2e/config_files.rs with the interpreter that has kubernetes-validate (see
tests/run-all.sh); it can be run by hand the same way:

    python3 tests/k8s_check.py [--configmap-toml OUT] FILE...

Each FILE is checked by its kind, and any other kind is an error (so no file goes unchecked):

* config/kubernetes/*.yaml (one replica) and config/kubernetes/ha/*.yaml (replicas on one
  S3 bucket), each directory a set of its own: every object against the Kubernetes schema
  (kubernetes-validate, strict), then the set as a whole: the kustomization lists every
  file; the ConfigMap's pullgate.toml names only paths that the Deployment mounts from the
  right volume (cache dir: the PVC, or an emptyDir when the blobs are in a bucket;
  credentials and client secrets: dockerconfigjson secrets; the signing key: a key of its
  secret; TLS: a kubernetes.io/tls secret; S3 credentials: a secret with access_key_id and
  secret_access_key); the config file in the container args is under the ConfigMap mount;
  probes hit /healthz and /readyz on the serving port, over HTTPS when TLS is on; selectors
  match; the grace period outlasts the drain; more than one replica only on a bucket, spread
  over nodes, with a budget that keeps one up. The ha/ set's Namespace and shared Secrets
  equal the single-replica set's, and its Deployment has the same hardening, probes, args
  and ports. With kubectl installed, `kubectl kustomize` renders each directory and the
  result is checked too.
* hosts.toml (containerd), *.conf (containers registries.conf), daemon.json (docker): parsed,
  and checked against the ConfigMap's pullgate.toml: every mirror host is one of its
  [auth] mirror_hosts, and every mirrored registry reaches the upstream of that name by the
  way pullgate routes (containerd's ?ns=, a path prefix, or the first upstream).

--configmap-toml OUT writes the ConfigMap's pullgate.toml to OUT, for `pullgate check-config`;
--ha-configmap-toml OUT does the same for config/kubernetes/ha/.
Exit status 0 when every check passes; otherwise each problem is printed and the status is 1.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import kubernetes_validate
import yaml

# The oldest Kubernetes release still commonly run; kubernetes-validate ships its schemas.
K8S_VERSION = "1.30.0"

# Exactly these objects make up a deployment, by the directory that holds it: one replica
# with its cache volume, or replicas on one bucket (the S3 secret and a headless Service in
# place of the volume).
EXPECTED_KINDS = {
    "kubernetes": Counter(
        {
            "Namespace": 1,
            "ConfigMap": 1,
            "Secret": 4,
            "PersistentVolumeClaim": 1,
            "Deployment": 1,
            "Service": 1,
            "PodDisruptionBudget": 1,
        }
    ),
    "ha": Counter(
        {
            "Namespace": 1,
            "ConfigMap": 1,
            "Secret": 5,
            "Deployment": 1,
            "Service": 2,
            "PodDisruptionBudget": 1,
        }
    ),
}

# S3 credentials in a mounted directory (pullgate-store's S3 credentials reader).
S3_KEYS = {"access_key_id", "secret_access_key"}

# Docker Hub's names, as pullgate-oci folds them.
DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

errors = []


def fail(where, message):
    errors.append(f"{where}: {message}")


def ok(message):
    print(f"ok  {message}")


def canonical_host(host):
    host = host.lower()
    return "docker.io" if host in DOCKER_HUB else host


def under(path, mount):
    """Whether `path` is `mount` or inside it (whole components)."""
    p, m = PurePosixPath(path), PurePosixPath(mount)
    return p == m or m in p.parents


def duration_seconds(text):
    """humantime-style durations as pullgate writes them: "30s", "1m 30s", "500ms"."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*(\d+)\s*([a-z]+)", text):
        if m.start() != pos or m.group(2) not in units:
            raise ValueError(f"not a duration: {text!r}")
        total += int(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"not a duration: {text!r}")
    return total


# ---------------------------------------------------------------------------------------
# Kubernetes


def load_objects(files):
    """(file, object) for every YAML document in the Kubernetes files, kustomization apart."""
    objects, kustomization = [], None
    for f in files:
        with open(f, encoding="utf-8") as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d is not None]
        if f.name == "kustomization.yaml":
            kustomization = (f, docs[0] if docs else {})
            continue
        if not docs:
            fail(f, "holds no Kubernetes object")
        for doc in docs:
            objects.append((f, doc))
    return objects, kustomization


def validate_schema(objects, label):
    for f, obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            fail(f, f"{name} does not match the Kubernetes {K8S_VERSION} schema at {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            fail(f, f"{name}: no Kubernetes {K8S_VERSION} schema for {obj.get('apiVersion')}")
        else:
            ok(f"{label}: {name} matches the Kubernetes {K8S_VERSION} schema (strict)")


def check_kinds(objects, where, k8s_dir):
    kinds = Counter(obj.get("kind") for _, obj in objects)
    expected = EXPECTED_KINDS.get(k8s_dir.name)
    if expected is None:
        fail(where, f"no set of objects is known for a directory {k8s_dir.name!r}: "
                    f"add it to EXPECTED_KINDS")
    elif kinds != expected:
        fail(where, f"objects by kind are {dict(kinds)}, expected {dict(expected)}")
    else:
        ok(f"{where}: {sum(kinds.values())} objects, every kind pullgate needs")


def only(objects, kind, where):
    found = [obj for _, obj in objects if obj.get("kind") == kind]
    if len(found) != 1:
        fail(where, f"expected one {kind}, found {len(found)}")
        return None
    return found[0]


def secret_keys(secret):
    return set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_set(objects, kustomization, k8s_dir, label):
    where = f"{k8s_dir} ({label})"
    by_kind = {}
    for _, obj in objects:
        by_kind.setdefault(obj.get("kind"), []).append(obj)

    # The kustomization includes every file, and only files that exist.
    if label != "files":
        pass
    elif kustomization is None:
        fail(where, "no kustomization.yaml")
    else:
        kf, k = kustomization
        listed = set(k.get("resources") or [])
        present = {p.name for p in k8s_dir.glob("*.yaml") if p.name != "kustomization.yaml"}
        if listed != present:
            fail(kf, f"resources {sorted(listed)} differ from the files {sorted(present)}")
        else:
            ok(f"{kf}: lists every object file")
        namespaces = [o["metadata"]["name"] for o in by_kind.get("Namespace", [])]
        if k.get("namespace") not in namespaces:
            fail(kf, f"namespace {k.get('namespace')!r} is not the Namespace object {namespaces}")
        for f, obj in objects:
            ns = obj.get("metadata", {}).get("namespace")
            if obj.get("kind") != "Namespace" and ns is not None and ns != k.get("namespace"):
                fail(f, f"{obj['kind']}/{obj['metadata']['name']} is in namespace {ns!r}")

    check_kinds(objects, where, k8s_dir)

    configmap = only(objects, "ConfigMap", where)
    deployment = only(objects, "Deployment", where)
    services = by_kind.get("Service", [])
    pdb = only(objects, "PodDisruptionBudget", where)
    if configmap is None or deployment is None:
        return None
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    claims = {c["metadata"]["name"]: c for c in by_kind.get("PersistentVolumeClaim", [])}

    data = configmap.get("data") or {}
    if "pullgate.toml" not in data:
        fail(where, "the ConfigMap has no pullgate.toml key")
        return None
    try:
        config = tomllib.loads(data["pullgate.toml"])
    except tomllib.TOMLDecodeError as e:
        fail(where, f"the ConfigMap's pullgate.toml is not TOML: {e}")
        return None

    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels") or {}
    containers = pod.get("containers") or []
    if len(containers) != 1:
        fail(where, f"the Deployment should run one container, not {len(containers)}")
        return config
    c = containers[0]
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = c.get("volumeMounts") or []

    def mount_for(path, what):
        """The mount `path` lies under (the innermost one), and its volume."""
        candidates = [m for m in mounts if under(path, m["mountPath"])]
        if not candidates:
            fail(where, f"{what} = {path!r} is not under any volumeMount of the container")
            return None, None
        m = max(candidates, key=lambda m: len(PurePosixPath(m["mountPath"]).parts))
        v = volumes.get(m["name"])
        if v is None:
            fail(where, f"volumeMount {m['name']!r} has no volume")
        return m, v

    def writable(path, what):
        m, v = mount_for(path, what)
        if m is None or v is None:
            return None
        if m.get("readOnly"):
            fail(where, f"{what} = {path!r}: the mount {m['mountPath']} is read-only")
        return m, v

    def secret_file(path, what, secret_type, key=None):
        """`path` is in a secret volume whose secret has `secret_type`; if `key`, it names
        that key's file, else it is the mount itself or one of its keys."""
        m, v = mount_for(path, what)
        if m is None or v is None:
            return
        if "secret" not in v:
            fail(where, f"{what} = {path!r} is on volume {v['name']!r}, which is not a secret")
            return
        name = v["secret"].get("secretName")
        secret = secrets.get(name)
        if secret is None:
            fail(where, f"{what}: volume {v['name']!r} mounts secret {name!r}, which is not defined")
            return
        if secret.get("type", "Opaque") != secret_type:
            fail(where, f"{what}: secret {name!r} is {secret.get('type')!r}, not {secret_type!r}")
        if not m.get("readOnly"):
            fail(where, f"{what}: mount {m['mountPath']} of a secret should be readOnly")
        if m.get("subPath") or m.get("subPathExpr"):
            fail(where, f"{what}: mount {m['mountPath']} uses subPath, so rotations never reach it")
        items = v["secret"].get("items")
        files = {i["path"] for i in items} if items else secret_keys(secret)
        rel = PurePosixPath(path).relative_to(m["mountPath"]).as_posix()
        if rel == ".":
            if key is not None:
                fail(where, f"{what} = {path!r} must name the {key!r} file, not the directory")
            elif secret_type == "kubernetes.io/dockerconfigjson" and ".dockerconfigjson" not in files:
                fail(where, f"{what}: secret {name!r} has no .dockerconfigjson")
            else:
                ok(f"{what} {path} is the directory of secret {name} ({secret_type})")
            return
        if rel not in files:
            fail(where, f"{what} = {path!r}: secret {name!r} mounted there has no key {rel!r} "
                        f"(it has {sorted(files)})")
        elif key is not None and rel != key:
            fail(where, f"{what} = {path!r} should be the secret's {key!r}")
        else:
            ok(f"{what} {path} is key {rel} of secret {name} ({secret_type})")

    # The cache on the PVC, writable; or, with the blobs in a bucket, the replica's index
    # on an emptyDir.
    storage = config.get("storage", {})
    bucket = storage.get("backend", "filesystem") == "s3"
    replicas = spec.get("replicas", 1)
    cache_dir = config.get("cache", {}).get("dir")
    if cache_dir is None:
        fail(where, "pullgate.toml has no cache.dir")
    else:
        found = writable(cache_dir, "cache.dir")
        if found:
            m, v = found
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if "emptyDir" in v:
                if not bucket:
                    fail(where, f"cache.dir = {cache_dir!r} is on emptyDir {v['name']!r}, lost with the "
                                "pod: with storage.backend \"filesystem\" the blobs are there, so it "
                                "needs a PersistentVolumeClaim")
                else:
                    ok(f"cache.dir {cache_dir} is emptyDir {v['name']}: the index of each replica, "
                       f"the blobs in bucket {storage.get('s3', {}).get('bucket')!r}")
            elif claim is None:
                fail(where, f"cache.dir = {cache_dir!r} is on volume {v['name']!r}, not a PersistentVolumeClaim")
            elif claim not in claims:
                fail(where, f"cache.dir: claim {claim!r} is not defined")
            else:
                ok(f"cache.dir {cache_dir} is on PersistentVolumeClaim {claim}")
                modes = claims[claim]["spec"].get("accessModes") or []
                if modes == ["ReadWriteOnce"] or modes == ["ReadWriteOncePod"]:
                    if spec.get("replicas", 1) > 1 or spec.get("strategy", {}).get("type") != "Recreate":
                        fail(where, f"claim {claim!r} is {modes[0]}: the Deployment needs "
                                    "replicas: 1 and strategy Recreate (each replica needs its own cache)")
                    else:
                        ok(f"one replica, Recreate: {modes[0]} cache claim {claim} is never shared")

    # Replicas share only a bucket.
    if replicas > 1:
        if not bucket:
            fail(where, f"{replicas} replicas with storage.backend \"filesystem\": each would need "
                        "a cache of its own; share blobs with storage.backend = \"s3\"")
        spread = {t.get("topologyKey"): t for t in pod.get("topologySpreadConstraints") or []}
        host = spread.get("kubernetes.io/hostname")
        if host is None or not matches((host.get("labelSelector") or {}).get("matchLabels"), pod_labels):
            fail(where, f"{replicas} replicas: no topologySpreadConstraint over kubernetes.io/hostname "
                        "selecting the pods (they could all land on one node)")
        else:
            ok(f"{replicas} replicas spread over {sorted(spread)}")
        if pdb is not None:
            unavailable = pdb["spec"].get("maxUnavailable")
            available = pdb["spec"].get("minAvailable")
            if not ((isinstance(unavailable, int) and 0 < unavailable < replicas)
                    or (isinstance(available, int) and 0 < available < replicas)):
                fail(where, f"{replicas} replicas: the PodDisruptionBudget should keep at least one "
                            f"up and let a drain evict one (maxUnavailable {unavailable!r}, "
                            f"minAvailable {available!r})")
            else:
                ok(f"PodDisruptionBudget: maxUnavailable {unavailable!r} minAvailable {available!r} "
                   f"of {replicas}")
    if bucket:
        s3 = storage.get("s3") or {}
        if "credentials" in s3:
            secret_file(s3["credentials"], "storage.s3.credentials", "Opaque")
            m, v = mount_for(s3["credentials"], "storage.s3.credentials")
            secret = secrets.get(((v or {}).get("secret") or {}).get("secretName"))
            if m is not None and secret is not None and PurePosixPath(s3["credentials"]) == PurePosixPath(m["mountPath"]):
                items = v["secret"].get("items")
                files = {i["path"] for i in items} if items else secret_keys(secret)
                if not S3_KEYS <= files:
                    fail(where, f"storage.s3.credentials: secret {secret['metadata']['name']!r} mounted "
                                f"there has {sorted(files)}, not {sorted(S3_KEYS)}")
                else:
                    ok(f"storage.s3.credentials: secret {secret['metadata']['name']} has {sorted(S3_KEYS)}")
        if "ca" in s3:
            m, v = mount_for(s3["ca"], "storage.s3.ca")
            if v is not None and not ({"secret", "configMap"} & set(v)):
                fail(where, f"storage.s3.ca = {s3['ca']!r} is not on a secret or ConfigMap volume")

    # Credentials and client secrets: dockerconfigjson secrets.
    for u in config.get("upstream", []):
        if "credentials" in u:
            secret_file(u["credentials"], f"upstream {u.get('name')} credentials",
                        "kubernetes.io/dockerconfigjson")
    auth = config.get("auth", {})
    for p in auth.get("client_secrets", []):
        secret_file(p, "auth.client_secrets", "kubernetes.io/dockerconfigjson")
    if "signing_key" in auth:
        secret_file(auth["signing_key"], "auth.signing_key", "Opaque",
                    key=PurePosixPath(auth["signing_key"]).name)
    tls = config.get("server", {}).get("tls")
    if tls is not None:
        secret_file(tls["cert"], "server.tls.cert", "kubernetes.io/tls", key="tls.crt")
        secret_file(tls["key"], "server.tls.key", "kubernetes.io/tls", key="tls.key")
    audit_path = config.get("audit", {}).get("path")
    if audit_path is not None:
        found = writable(str(PurePosixPath(audit_path).parent), "audit.path's directory")
        if found and not ({"emptyDir", "persistentVolumeClaim"} & set(found[1])):
            fail(where, f"audit.path = {audit_path!r} is not on an emptyDir or a claim")

    # Every secret the Deployment mounts exists.
    for v in volumes.values():
        if "secret" in v and v["secret"].get("secretName") not in secrets:
            fail(where, f"volume {v['name']!r} mounts undefined secret {v['secret'].get('secretName')!r}")
        if "configMap" in v and v["configMap"].get("name") != configmap["metadata"]["name"]:
            fail(where, f"volume {v['name']!r} mounts undefined ConfigMap {v['configMap'].get('name')!r}")

    # The config file in the args is the ConfigMap's pullgate.toml.
    args = c.get("args") or []
    config_path = None
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            config_path = args[i + 1]
        elif a.startswith("--config="):
            config_path = a.split("=", 1)[1]
    if args[:1] != ["serve"]:
        fail(where, f"the container args should start with serve, not {args[:1]}")
    if config_path is None:
        fail(where, "the container args have no --config")
    else:
        m, v = mount_for(config_path, "--config")
        if v is not None:
            if (v.get("configMap") or {}).get("name") != configmap["metadata"]["name"]:
                fail(where, f"--config {config_path} is not on the ConfigMap "
                            f"{configmap['metadata']['name']!r} volume")
            else:
                rel = PurePosixPath(config_path).relative_to(m["mountPath"]).as_posix()
                items = v["configMap"].get("items")
                files = {i["path"] for i in items} if items else set(data)
                if rel not in files:
                    fail(where, f"--config {config_path}: the ConfigMap mount has no {rel!r}")
                elif not items and rel != "pullgate.toml":
                    fail(where, f"--config {config_path} is not the pullgate.toml key")
                else:
                    ok(f"--config {config_path} is the ConfigMap's pullgate.toml")
                if m.get("subPath"):
                    fail(where, "the ConfigMap is mounted with subPath")

    # The port pullgate listens on, named, and the probes on it.
    listen = config.get("server", {}).get("listen", "")
    port = int(listen.rsplit(":", 1)[-1]) if ":" in listen else None
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    if port not in ports.values():
        fail(where, f"server.listen {listen!r}: no containerPort {port} (ports: {ports})")

    def probe(kind, path):
        p = c.get(kind)
        if p is None:
            fail(where, f"the container has no {kind}")
            return
        get = p.get("httpGet") or {}
        target = get.get("port")
        number = ports.get(target) if isinstance(target, str) else target
        scheme = get.get("scheme", "HTTP")
        want = "HTTPS" if tls is not None else "HTTP"
        if get.get("path") != path:
            fail(where, f"{kind} asks {get.get('path')!r}, not {path}")
        elif number != port:
            fail(where, f"{kind} port {target!r} is not the port pullgate listens on ({port})")
        elif scheme != want:
            fail(where, f"{kind} uses {scheme}, but pullgate serves {want}")
        else:
            ok(f"{kind}: {scheme} {path} on port {port}")

    probe("livenessProbe", "/healthz")
    probe("readinessProbe", "/readyz")
    if "startupProbe" in c:
        probe("startupProbe", "/healthz")

    # SIGTERM drains for drain_timeout; kubelet must wait longer than that.
    try:
        drain = duration_seconds(config.get("server", {}).get("drain_timeout", "30s"))
    except ValueError as e:
        fail(where, f"server.drain_timeout: {e}")
    else:
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace <= drain:
            fail(where, f"terminationGracePeriodSeconds {grace} is not above drain_timeout {drain:g}s")
        else:
            ok(f"terminationGracePeriodSeconds {grace} > server.drain_timeout {drain:g}s")

    # The hardening the image is built for.
    sc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    for field, want, got in [
        ("pod runAsNonRoot", True, sc.get("runAsNonRoot")),
        ("pod seccompProfile", "RuntimeDefault", (sc.get("seccompProfile") or {}).get("type")),
        ("readOnlyRootFilesystem", True, csc.get("readOnlyRootFilesystem")),
        ("allowPrivilegeEscalation", False, csc.get("allowPrivilegeEscalation")),
        ("capabilities.drop", ["ALL"], (csc.get("capabilities") or {}).get("drop")),
    ]:
        if got != want:
            fail(where, f"{field} is {got!r}, expected {want!r}")

    # Selectors.
    if not matches(spec.get("selector", {}).get("matchLabels"), pod_labels):
        fail(where, "the Deployment's selector does not match its pod labels")
    for service in services:
        name = service["metadata"]["name"]
        if not matches(service["spec"].get("selector"), pod_labels):
            fail(where, f"Service {name!r}: its selector does not match the pod labels")
        for sp in service["spec"].get("ports", []):
            t = sp.get("targetPort")
            if (ports.get(t) if isinstance(t, str) else t) != port:
                fail(where, f"Service {name!r} port {sp.get('name')!r} targets {t!r}, not pullgate's port")
    headless = [s["metadata"]["name"] for s in services if s["spec"].get("clusterIP") == "None"]
    clients_svc = [s["metadata"]["name"] for s in services if s["spec"].get("clusterIP") != "None"]
    if len(clients_svc) != 1:
        fail(where, f"expected one client Service (not headless), found {clients_svc}")
    if replicas > 1:
        if len(headless) != 1:
            fail(where, f"{replicas} replicas: expected one headless Service for them, found {headless}")
        else:
            ok(f"headless Service {headless[0]} beside client Service {clients_svc}")
    if pdb is not None and not matches(pdb["spec"].get("selector", {}).get("matchLabels"), pod_labels):
        fail(where, "the PodDisruptionBudget's selector does not match the pod labels")

    # Every client secret entry grants something under this configuration.
    clients = [p for p in auth.get("client_secrets", [])]
    for v in volumes.values():
        name = (v.get("secret") or {}).get("secretName")
        mount = next((m for m in mounts if m["name"] == v["name"]), None)
        if name in secrets and mount and any(under(p, mount["mountPath"]) for p in clients):
            check_client_entries(secrets[name], config, where)
    return config


def entry_grants(key, config):
    """What a dockerconfigjson key grants, as pullgate-auth reads it; None for nothing."""
    rest = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", key)
    host, _, path = rest.partition("/")
    if re.fullmatch(r"v\d+/?", path):
        path = ""
    mirror_hosts = mirror_hosts_of(config)
    upstreams = [canonical_host(u["name"]) for u in config.get("upstream", [])]

    def host_matches(pattern, h):
        pattern, h = canonical_host(pattern), canonical_host(h)
        if pattern == h:
            return True
        return pattern.startswith("*.") and "." in h and h.split(".", 1)[1] == pattern[2:]

    if any(host_matches(host, m) for m in mirror_hosts):
        return "every upstream" if not path else f"{path}"
    if any(host_matches(host, u) for u in upstreams):
        return canonical_host(host) + (f"/{path}" if path else "")
    return None


def mirror_hosts_of(config):
    hosts = list(config.get("auth", {}).get("mirror_hosts", []))
    listen = config.get("server", {}).get("listen")
    if listen:
        hosts.append(listen)
    return hosts


def check_client_entries(secret, config, where):
    name = secret["metadata"]["name"]
    text = (secret.get("stringData") or {}).get(".dockerconfigjson")
    if text is None:
        return  # base64 data: a real secret, not ours to read
    try:
        auths = json.loads(text)["auths"]
    except (ValueError, KeyError, TypeError) as e:
        fail(where, f"secret {name!r}: .dockerconfigjson is not a dockerconfigjson: {e}")
        return
    for key in auths:
        grant = entry_grants(key, config)
        if grant is None:
            fail(where, f"secret {name!r}: entry {key!r} names neither a mirror host "
                        f"{mirror_hosts_of(config)} nor an upstream: it grants nothing")
        else:
            ok(f"secret {name} entry {key} may pull {grant}")


# ---------------------------------------------------------------------------------------
# Client configurations


def upstream_names(config):
    return [u["name"] for u in config.get("upstream", [])]


def upstream_for(config, host):
    """The configured upstream a registry host names, if any (Hub aliases fold)."""
    for name in upstream_names(config):
        if canonical_host(name) == canonical_host(host):
            return name
    return None


def route(config, first_component):
    """Which upstream a path starting with `first_component` reaches (route.rs)."""
    names = upstream_names(config)
    if first_component and ("." in first_component or ":" in first_component
                            or first_component == "localhost"):
        hit = upstream_for(config, first_component)
        if hit:
            return hit
    return names[0] if names else None


def check_mirror_host(f, hostport, config, what):
    if not any(canonical_host(hostport) == canonical_host(m) for m in mirror_hosts_of(config)):
        fail(f, f"{what} {hostport!r} is not in pullgate's [auth] mirror_hosts "
                f"{mirror_hosts_of(config)}: an entry keyed by it would grant nothing")


def check_containerd(f, config):
    with open(f, "rb") as fh:
        doc = tomllib.load(fh)
    ns = f.parent.name
    if ns == "_default":
        fail(f, "a _default hosts.toml sends registries pullgate has no upstream for")
    elif upstream_for(config, ns) is None:
        fail(f, f"the directory {ns!r} (containerd's ?ns=) is not a pullgate upstream "
                f"{upstream_names(config)}")
    hosts = doc.get("host") or {}
    if not hosts:
        fail(f, "no [host.\"...\"] mirror")
    for url, h in hosts.items():
        u = urlsplit(url)
        want = "https" if config.get("server", {}).get("tls") else "http"
        if u.scheme != want:
            fail(f, f"host {url!r}: pullgate serves {want}")
        if u.path not in ("", "/") and not h.get("override_path"):
            fail(f, f"host {url!r} has a path: containerd would ask {u.path}/v2/..., "
                    "which pullgate does not serve")
        caps = h.get("capabilities", ["pull", "resolve", "push"])
        if "pull" not in caps or not set(caps) <= {"pull", "resolve"}:
            fail(f, f"host {url!r}: capabilities {caps} must be pull (and resolve), never push")
        check_mirror_host(f, u.netloc, config, "host")
    if "server" in doc and not urlsplit(doc["server"]).scheme:
        fail(f, f"server {doc['server']!r} is not a URL")
    ok(f"{f}: containerd mirror for {ns} (?ns={ns} reaches upstream {upstream_for(config, ns)})")


def check_registries_conf(f, config):
    with open(f, "rb") as fh:
        doc = tomllib.load(fh)
    registries = doc.get("registry") or []
    if not registries:
        fail(f, "no [[registry]]")
    for r in registries:
        prefix = r.get("prefix") or r.get("location", "")
        host = prefix.split("/", 1)[0]
        for m in r.get("mirror") or []:
            loc = m.get("location", "")
            hostport, _, path = loc.partition("/")
            check_mirror_host(f, hostport, config, "mirror")
            if m.get("insecure") and config.get("server", {}).get("tls"):
                fail(f, f"mirror {loc!r} is insecure, but pullgate serves TLS")
            reached = route(config, path.split("/", 1)[0])
            wanted = upstream_for(config, host)
            if wanted is None:
                fail(f, f"registry {prefix!r} is not a pullgate upstream {upstream_names(config)}")
            elif reached != wanted:
                fail(f, f"mirror {loc!r} for {prefix!r} reaches upstream {reached!r}, not {wanted!r}")
            else:
                ok(f"{f}: {prefix} through {loc} reaches upstream {reached}")


def check_daemon_json(f, config):
    with open(f, encoding="utf-8") as fh:
        doc = json.load(fh)
    mirrors = doc.get("registry-mirrors")
    if not isinstance(mirrors, list) or not mirrors:
        fail(f, "no registry-mirrors")
        return
    default = route(config, "")
    for url in mirrors:
        u = urlsplit(url)
        if u.path not in ("", "/"):
            fail(f, f"{url!r}: docker ignores a mirror path; pullgate needs none")
        check_mirror_host(f, u.netloc, config, "registry mirror")
        # docker sends plain /v2/library/... paths for Docker Hub images only.
        if upstream_for(config, "docker.io") != default:
            fail(f, f"docker's mirror requests reach the first upstream {default!r}, not Docker Hub")
        else:
            ok(f"{f}: {url} mirrors Docker Hub (pullgate's first upstream {default})")


def check_same_as_base(base, variant, where):
    """A variant set (ha/) keeps what it shares with the single-replica set equal: the
    Namespace and the Secrets of the same name, and the Deployment's hardening, probes,
    args and ports."""
    named = {(o.get("kind"), o["metadata"]["name"]): o for _, o in base}
    for _, obj in variant:
        key = (obj.get("kind"), obj["metadata"]["name"])
        if obj.get("kind") in ("Namespace", "Secret") and key in named:
            if obj != named[key]:
                fail(where, f"{key[0]}/{key[1]} differs from the one in config/kubernetes")
            else:
                ok(f"{where}: {key[0]}/{key[1]} is the same as config/kubernetes's")
    deployments = [o for _, o in base if o.get("kind") == "Deployment"], \
                  [o for _, o in variant if o.get("kind") == "Deployment"]
    if any(len(d) != 1 for d in deployments):
        return
    (b,), (v,) = deployments
    bpod, vpod = b["spec"]["template"]["spec"], v["spec"]["template"]["spec"]
    bc, vc = bpod["containers"][0], vpod["containers"][0]
    for what, x, y in [
        ("the pod's securityContext", bpod.get("securityContext"), vpod.get("securityContext")),
        ("terminationGracePeriodSeconds", bpod.get("terminationGracePeriodSeconds"),
         vpod.get("terminationGracePeriodSeconds")),
        ("automountServiceAccountToken", bpod.get("automountServiceAccountToken"),
         vpod.get("automountServiceAccountToken")),
        ("the container's securityContext", bc.get("securityContext"), vc.get("securityContext")),
        ("the container's args", bc.get("args"), vc.get("args")),
        ("the container's ports", bc.get("ports"), vc.get("ports")),
        ("the livenessProbe", bc.get("livenessProbe"), vc.get("livenessProbe")),
        ("the readinessProbe", bc.get("readinessProbe"), vc.get("readinessProbe")),
        ("the startupProbe", bc.get("startupProbe"), vc.get("startupProbe")),
    ]:
        if x != y:
            fail(where, f"the Deployment's {what} differs from config/kubernetes's: {y!r}, not {x!r}")
    ok(f"{where}: the Deployment's hardening, probes, args and ports are config/kubernetes's")


# ---------------------------------------------------------------------------------------


def kustomize(kubectl, k8s_dir):
    out = subprocess.run([kubectl, "kustomize", str(k8s_dir)], capture_output=True, text=True)
    if out.returncode != 0:
        fail(k8s_dir, f"kubectl kustomize failed: {out.stderr.strip()}")
        return None
    return [(Path(f"{k8s_dir} (kustomize)"), d) for d in yaml.safe_load_all(out.stdout) if d]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--configmap-toml", type=Path,
                    help="write the ConfigMap's pullgate.toml here")
    ap.add_argument("--ha-configmap-toml", type=Path,
                    help="write config/kubernetes/ha's ConfigMap's pullgate.toml here")
    args = ap.parse_args()

    # config/kubernetes/ and each directory below it: a set of its own.
    k8s, clients = {}, []
    for f in args.files:
        if f.suffix in (".yaml", ".yml") and "kubernetes" in f.parent.parts:
            k8s.setdefault(f.parent, []).append(f)
        elif f.name == "hosts.toml":
            clients.append((check_containerd, f))
        elif f.suffix == ".conf":
            clients.append((check_registries_conf, f))
        elif f.name == "daemon.json":
            clients.append((check_daemon_json, f))
        else:
            fail(f, "no check for this kind of file")
    base_dirs = [d for d in k8s if d.name == "kubernetes"]
    if len(base_dirs) != 1:
        fail("arguments", "no config/kubernetes/*.yaml given: the client checks need its ConfigMap")
        return report()
    base_dir = base_dirs[0]

    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("NOTE kubectl is not installed: `kubectl kustomize` was not run "
              "(the files and the kustomization's resource list were checked)")
    sets = {}
    for k8s_dir in sorted(k8s, key=lambda d: (d != base_dir, str(d))):
        objects, kustomization = load_objects(k8s[k8s_dir])
        validate_schema(objects, "file")
        sets[k8s_dir] = (objects, check_set(objects, kustomization, k8s_dir, "files"))
        if kubectl:
            rendered = kustomize(kubectl, k8s_dir)
            if rendered is not None:
                validate_schema(rendered, "rendered")
                check_set(rendered, kustomization, k8s_dir, "kubectl kustomize")
        if k8s_dir != base_dir:
            check_same_as_base(sets[base_dir][0], objects, k8s_dir)
    objects, config = sets[base_dir]

    if config is not None:
        for check, f in clients:
            try:
                check(f, config)
            except (ValueError, tomllib.TOMLDecodeError) as e:
                fail(f, f"cannot be parsed: {e}")
        for out, k8s_dir in [(args.configmap_toml, base_dir),
                             (args.ha_configmap_toml, base_dir / "ha")]:
            if out is None:
                continue
            if k8s_dir not in sets:
                fail(k8s_dir, "no files of this directory were given")
                continue
            cm = next(o for _, o in sets[k8s_dir][0] if o.get("kind") == "ConfigMap")
            out.write_text(cm["data"]["pullgate.toml"], encoding="utf-8")
    return report()


def report():
    if errors:
        for e in errors:
            print(f"FAIL {e}", file=sys.stderr)
        print(f"k8s_check: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print("k8s_check: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
