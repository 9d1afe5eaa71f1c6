"""Offline checks of the Dockerfile and the Kubernetes manifests (run by scripts/check-deploy).

Manifests: each kustomization is built, validated against the Kubernetes schema
(`kubernetes-validate --strict`), and then checked for what a schema cannot see: that a
pod's drain fits in its termination grace, that memory covers the cache, that ports and
probes match the service's config, that containers run non-root on a read-only root,
and that no key material sits in a ConfigMap.

Dockerfile: hadolint, then the builder stage's steps run as written: WORKDIR, COPY and RUN
in order, in a scratch directory standing for the image's `/` (target/docker-root, emptied first:
a cold build, as CI's; COPY keeps file times as Docker's does, which is what the
Dockerfile's `touch` step is there for). What the runtime stage copies from the
builder must exist; the binary must need no library beyond the runtime image's (glibc,
libgcc), and must start with the image's ENTRYPOINT and CMD (addresses moved to free
loopback ports), answer /healthz, and stop cleanly on SIGTERM.

Exits non-zero on the first failed check, saying which.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
KUSTOMIZATIONS = ["k8s/base", "k8s/overlays/shared-tier", "k8s/examples/worker-sidecar",
                  "k8s/examples/worker-sidecar-tier"]
# What the runtime image (distroless cc) provides.
RUNTIME_LIBS = {"linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0",
                "libdl.so.2", "librt.so.1", "ld-linux-x86-64.so.2"}
# The process itself (code, runtime, small calls) in the sizing formula of docs/operations.md.
PROCESS_MEMORY = 64 << 20


class CheckFailed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def size(text: str) -> int:
    """A config size (`768MiB`) or a Kubernetes quantity (`1536Mi`, `6Gi`) in bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(i?)B?\s*", str(text))
    check(m is not None, f"not a size: {text!r}")
    n, unit, binary = int(m.group(1)), m.group(2), m.group(3)
    base = 1024 if binary or unit == "" else 1000
    return n * base ** " KMGT".index(unit or " ")


def seconds(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", text)
    check(m is not None, f"not a duration: {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


# ---- manifests ------------------------------------------------------------------------

def check_manifests(kustomize: str, validate: str, out_dir: Path) -> None:
    for k in KUSTOMIZATIONS:
        rendered = subprocess.run([kustomize, "build", str(REPO / k)], capture_output=True, text=True)
        check(rendered.returncode == 0, f"kustomize build {k}: {rendered.stderr}")
        path = out_dir / (k.replace("/", "_") + ".yaml")
        path.write_text(rendered.stdout)
        result = subprocess.run([validate, "--strict", "--quiet", str(path)], capture_output=True, text=True)
        check(result.returncode == 0, f"kubernetes-validate --strict {k}:\n{result.stdout}{result.stderr}")
        docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
        check_semantics(k, docs)
        kinds = sorted({d["kind"] for d in docs})
        print(f"ok  {k}: {len(docs)} objects ({', '.join(kinds)}) pass kubernetes-validate --strict and the checks")


def check_semantics(name: str, docs: list) -> None:
    by_kind: dict = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    for cm in configmaps.values():
        for key, value in (cm.get("data") or {}).items():
            check("-----BEGIN" not in value, f"{name}: ConfigMap {key} holds key material (use a Secret)")
            check(not re.search(r"AKIA[0-9A-Z]{16}", value), f"{name}: ConfigMap {key} holds an AWS key")
    check(not by_kind.get("Secret"), f"{name}: Secrets are the operator's, not the manifests'")
    deployments = by_kind.get("Deployment", [])
    check(deployments, f"{name}: no Deployment")
    served = 0
    for dep in deployments:
        spec = dep["spec"]["template"]["spec"]
        pod_sc = spec.get("securityContext", {})
        check(pod_sc.get("runAsNonRoot") is True, f"{name}: pod must run as non-root")
        containers = spec.get("containers", []) + spec.get("initContainers", [])
        for c in containers:
            sc = c.get("securityContext", {})
            check(sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}: read-only root filesystem")
            check(sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}: no privilege escalation")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{c['name']}: drop all capabilities")
        for c in containers:
            if "resultstore" not in c.get("image", ""):
                continue
            served += 1
            check_resultstore_container(name, dep, spec, c, configmaps)
    check(served, f"{name}: no resultstore container")
    if not name.startswith("k8s/examples/"):
        services = by_kind.get("Service", [])
        check(any(s["spec"].get("clusterIP") == "None" for s in services), f"{name}: a headless Service for routing")
        for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"):
            check(by_kind.get(kind), f"{name}: a {kind}")


def check_resultstore_container(name: str, dep: dict, spec: dict, c: dict, configmaps: dict) -> None:
    where = f"{name}/{c['name']}"
    args = c.get("args", [])
    check(args[:2] == ["serve", "--config"], f"{where}: runs `serve --config FILE`")
    config_path = args[2]
    mount = next(m for m in c["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    cm = configmaps[volume["configMap"]["name"]]
    config = tomllib.loads(cm["data"][config_path.rsplit("/", 1)[1]])

    # Drain: the kubelet waits terminationGracePeriodSeconds from preStop's start.
    grace = seconds(config.get("shutdown_grace_period", "20s"))
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    period = spec.get("terminationGracePeriodSeconds", 30)
    check(pre_stop > 0, f"{where}: a preStop pause lets endpoints drop the pod before the drain")
    check(grace + pre_stop + 5 <= period,
          f"{where}: shutdown_grace_period {grace}s + preStop {pre_stop}s + 5s margin exceeds "
          f"terminationGracePeriodSeconds {period}")

    # Memory: requests = limits, covering the peak of docs/operations.md ("Sizing"): cache +
    # fill budget + 3 x request bytes in flight + 3 x stream pieces x streams + the process.
    resources = c["resources"]
    limit = size(resources["limits"]["memory"])
    check(size(resources["requests"]["memory"]) == limit, f"{where}: memory request equals the limit")
    cache = config.get("cache", {})
    limits = config.get("limits", {})
    needed = (
        size(cache.get("capacity", "256MiB"))
        + size(cache.get("fill_budget", "256MiB"))
        + 3 * size(limits.get("max_request_bytes_in_flight", "256MiB"))
        + 3 * size(limits.get("stream_chunk_size", "8MiB")) * int(limits.get("max_concurrent_streams", 64))
        + (size(str(config["tier"].get("copies", "32MiB"))) if "tier" in config else 0)
        + PROCESS_MEMORY
    )
    check(limit >= needed, f"{where}: memory limit {limit} below the sizing formula's peak ({needed})")

    # A replica of a tier names itself as its peers find it: the pod's IP.
    tier = config.get("tier", {})
    if "peers" in tier:
        listen = config.get("listen", "127.0.0.1:50051")
        env = {e["name"]: e for e in c.get("env", [])}
        check(env.get("RESULTSTORE_ADVERTISE", {}).get("value") == "$(POD_IP):" + str(port_of(listen)),
              f"{where}: RESULTSTORE_ADVERTISE is $(POD_IP) and the listen port")
        check(env.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP",
              f"{where}: POD_IP comes from status.podIP")
        check(tier["peers"].startswith("dns"), f"{where}: peers are the headless Service's addresses")
    for key in ("ca", "upstream_token_file"):
        if key in tier:
            m = next((m for m in c["volumeMounts"] if tier[key].startswith(m["mountPath"] + "/")), None)
            check(m is not None, f"{where}: tier.{key} ({tier[key]}) is mounted")

    # Ports and probes agree with the config.
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    listen = config.get("listen", "127.0.0.1:50051")
    metrics = config.get("metrics", {}).get("listen")
    check(metrics is not None and ports.get("metrics") == port_of(metrics), f"{where}: metrics port = metrics.listen")
    loopback = listen.startswith("127.") or listen.startswith("[::1]")
    if not loopback:
        check(ports.get("grpc") == port_of(listen), f"{where}: grpc port = listen")
    tls = "tls" in config
    probes = [c.get(p) for p in ("readinessProbe", "livenessProbe", "startupProbe") if c.get(p)]
    check(probes, f"{where}: probes")
    for probe in probes:
        if "grpc" in probe:
            check(not tls and not loopback, f"{where}: the kubelet's gRPC probe needs plaintext on a pod address")
            check(probe["grpc"]["port"] == port_of(listen), f"{where}: gRPC probe on the listen port")
        else:
            check(probe.get("httpGet", {}).get("path") == "/healthz", f"{where}: HTTP probes use /healthz")
    if not tls and not loopback:
        check(any("grpc" in p for p in probes), f"{where}: gRPC health probes (grpc.health.v1)")
    if tls:
        tls_paths = [config["tls"]["cert"], config["tls"]["key"]]
        for p in tls_paths:
            m = next((m for m in c["volumeMounts"] if p.startswith(m["mountPath"] + "/")), None)
            check(m is not None, f"{where}: {p} is mounted")
            v = next(v for v in spec["volumes"] if v["name"] == m["name"])
            check("secret" in v, f"{where}: {p} comes from a Secret")


# ---- Dockerfile -----------------------------------------------------------------------

def dockerfile_stages(text: str) -> list:
    """[(stage name, [(instruction, args)])], continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        if not current and raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    stages = []
    for line in lines:
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            parts = args.split()
            stages.append((parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else "", parts[0], []))
        else:
            stages[-1][2].append((instr, args.strip()))
    return stages


def dockerignored(rel: str, patterns: list) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        pat = pat.lstrip("/")
        if pat.startswith("**/"):
            if any(fnmatch.fnmatch(p, pat[3:]) for p in parts):
                return True
        elif any(fnmatch.fnmatch("/".join(parts[: i + 1]), pat) for i in range(len(parts))):
            return True
    return False


def copy_in(src: Path, dst: Path, ignore: list) -> None:
    """Docker's COPY: files keep their times; ignored paths are not in the context."""
    if src.is_dir():
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(REPO).as_posix()
            if dockerignored(rel, ignore) or p.is_dir():
                continue
            target = dst / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def json_or_shell(args: str) -> list:
    if args.startswith("["):
        return json.loads(args)
    return ["sh", "-c", args]


def check_hadolint(hadolint: str) -> None:
    lint = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    check(lint.returncode == 0, f"hadolint Dockerfile:\n{lint.stdout}{lint.stderr}")
    print("ok  hadolint Dockerfile")


def check_image_build(root: Path) -> None:
    text = (REPO / "Dockerfile").read_text()
    ignore = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines()
              if l.strip() and not l.startswith("#")]
    stages = dockerfile_stages(text)
    check(len(stages) >= 2, "a multi-stage Dockerfile")
    (builder_name, builder_image, builder), (_, runtime_image, runtime) = stages[0], stages[-1]
    check(builder_name == "builder" and "rust" in builder_image, "the first stage builds with a Rust image")

    # Every run starts from an empty root, as `docker build` without a layer cache does
    # (CI's case). Keeping cargo's target directory between runs would let cargo trust
    # outputs newer than the copied sources, whose times COPY keeps: not what Docker does.
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    workdir = root
    for instr, args in builder:
        if instr == "WORKDIR":
            workdir = root / args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instr == "COPY":
            parts = shlex.split(args)
            check(not any(p.startswith("--") for p in parts), f"builder COPY with flags is not replayed: {args}")
            *srcs, dest = parts
            for s in srcs:
                src = REPO / s
                check(src.exists(), f"COPY {s}: not in the build context")
                dst = workdir / dest if not dest.startswith("/") else root / dest.lstrip("/")
                if dest.endswith("/") or (len(srcs) > 1) or dest in (".", "./"):
                    dst = dst / Path(s).name
                copy_in(src, dst, ignore)
        elif instr == "RUN":
            cmd = json_or_shell(args)
            print(f"..  RUN {args}", flush=True)
            result = subprocess.run(cmd, cwd=workdir)
            check(result.returncode == 0, f"RUN {args}: exit {result.returncode}")
        elif instr in ("ENV", "ARG"):
            raise CheckFailed(f"builder {instr} is not replayed by this check: add it here first")

    # The runtime stage: what it copies must exist; how it starts.
    entry, cmd, user, exposed = None, [], None, []
    binary = None
    for instr, args in runtime:
        if instr == "COPY":
            parts = shlex.split(args)
            flags = [p for p in parts if p.startswith("--")]
            srcs = [p for p in parts if not p.startswith("--")]
            check("--from=builder" in flags, f"runtime COPY comes from the builder: {args}")
            src = root / srcs[0].lstrip("/")
            check(src.exists(), f"runtime COPY {srcs[0]}: the builder made no such file")
            if src.is_file():
                binary = (src, srcs[1])
        elif instr == "ENTRYPOINT":
            entry = json.loads(args)
        elif instr == "CMD":
            cmd = json.loads(args)
        elif instr == "USER":
            user = args
        elif instr == "EXPOSE":
            exposed = [int(p) for p in args.split()]
    check(entry is not None and binary is not None and entry[0] == binary[1],
          "ENTRYPOINT (exec form, no shell) runs the binary the runtime stage copies")
    check(user is not None and user.split(":")[0] not in ("0", "root"), "the image runs as a non-root USER")
    check(50051 in exposed and 9090 in exposed, "the image exposes the gRPC and metrics ports")

    libs = subprocess.run(["ldd", str(binary[0])], capture_output=True, text=True).stdout
    needed = {line.split()[0].rsplit("/", 1)[-1] for line in libs.splitlines() if line.strip()}
    extra = needed - RUNTIME_LIBS
    check(not extra, f"the binary needs libraries the runtime image ({runtime_image}) lacks: {sorted(extra)}")
    print(f"ok  the builder steps built {binary[1]}; it links only {sorted(needed)}")

    args = [a.replace("0.0.0.0:50051", "127.0.0.1:0").replace("0.0.0.0:9090", "127.0.0.1:0") for a in cmd]
    data = root / "data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    proc = subprocess.Popen([str(binary[0]), *entry[1:], *args], cwd=data, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        first = proc.stdout.readline()
        check(first.startswith("resultstore listening on "), f"ENTRYPOINT+CMD did not start: {first!r}")
        second = proc.stdout.readline()
        check(second.startswith("resultstore metrics on "), f"no metrics address: {second!r}")
        health = second.split()[-1].replace("/metrics", "/healthz")
        body = urllib.request.urlopen(health, timeout=10).read()
        check(body == b"ok\n", f"/healthz answered {body!r}")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    check(code == 0, f"SIGTERM: exit {code}")
    print(f"ok  {' '.join(entry + cmd)} starts (as the image's CMD), serves /healthz, stops on SIGTERM")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hadolint", required=True)
    ap.add_argument("--kubernetes-validate", required=True)
    ap.add_argument("--kustomize", required=True)
    ap.add_argument("--skip-image-build", action="store_true",
                    help="manifests and hadolint only (a quick local loop; CI runs everything)")
    a = ap.parse_args()
    out = REPO / "target" / "deploy"
    out.mkdir(parents=True, exist_ok=True)
    try:
        check_manifests(a.kustomize, a.kubernetes_validate, out)
        check_hadolint(a.hadolint)
        if a.skip_image_build:
            print("..  the Dockerfile's build steps skipped (--skip-image-build)")
        else:
            check_image_build(REPO / "target" / "docker-root")
    except CheckFailed as e:
        print(f"check-deploy: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
