"""`make deploy-test`: the demo story against the images, run by podman through compose, then through
`podman kube play` of the Kubernetes manifests.

    python deploy/containers/deploy_test.py [--only image|compose|kube]

First the service image itself: the PDF renderer finds a CJK font in it, it runs as a non-root user,
and holds no dev extra.

The images must exist (`make images`). Each phase starts from nothing (fresh keys, empty volumes), waits
for every service to be healthy in the start order of deploy/compose/compose.yaml, walks the story of
`fapiao demo` (fapiao_cli.demo.walk: the same checks) against it, and removes everything it started,
also when a step fails or times out. Every wait has a deadline. Exit code 0 only when every phase passed.

Compose: deploy/compose/init.sh (the init step, in the image), then podman-compose brings the services up
tier by tier: podman-compose skips `depends_on: {condition: service_healthy}` on podman before 4.6
(Debian 12 has 4.3), and no systemd timer runs the healthchecks here, so this driver runs each
container's healthcheck (`podman healthcheck run`) and starts a tier once the tiers it depends on are
healthy.

Kube: Kafka and PostgreSQL come from the compose file (their StatefulSets need volume claim templates
and a cluster of three, which `podman kube play` cannot run); every Fapiao workload of deploy/k8s
(ConfigMap, Secrets from deploy/k8s/make_secrets.py, the Deployments, and the validators' StatefulSets
played as Deployments of their own pod template) is played with the host's network, one replica each,
its ports and addresses those of the compose stack (docs/deploy.md lists what is changed, and why).
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from fapiao_stack.prometheus import (
    CheckFailed,
    check_scrapes,
    check_validator_down_alert,
    prometheus_server,
    stack_targets,
)

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "compose" / "compose.yaml"
K8S_DIR = REPO / "deploy" / "k8s"
WORK = REPO / "build" / "deploy-test"
PROJECT = "fapiao-deploy-test"
# Ports of the stack under test: those of `make up` shifted by this much, so both can run side by side.
PORT_OFFSET = os.environ.get("FAPIAO_DEPLOY_PORT_OFFSET", "700")
INFRASTRUCTURE = ("kafka", "postgres")
HEALTH_TIMEOUT_S = 240.0
DEMO_TIMEOUT_S = 600.0
COMMAND_TIMEOUT_S = 300.0
# The demo's story, against the stack FAPIAO_RUN_DIR describes (fapiao_cli.local reads its stack.json).
DEMO = """
import asyncio, sys
from fapiao_cli.demo import Story, StoryFailed, walk
story = Story()
try:
    asyncio.run(walk(story))
except StoryFailed:
    pass
print("\\nDEMO FAILED: " + story.failures[0] if story.failures else "\\nEvery promise kept.")
sys.exit(1 if story.failures else 0)
"""


class PhaseFailed(RuntimeError):
    """A step of a phase did not do what it must."""


def say(message: str) -> None:
    print(message, flush=True)


def run(argv: list[str], timeout_s: float = COMMAND_TIMEOUT_S, check: bool = True, quiet: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run a command with a deadline; PhaseFailed (with its output) when it fails and `check`."""
    try:
        done = subprocess.run(argv, capture_output=quiet, text=True, timeout=timeout_s, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise PhaseFailed(f"{' '.join(argv[:4])} ... did not finish within {timeout_s:.0f} s") from None
    if check and done.returncode != 0:
        output = (done.stdout or "") + (done.stderr or "")
        raise PhaseFailed(f"{' '.join(argv[:6])} ... exited {done.returncode}:\n{output[-3000:]}")
    return done


def stack_env(run_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"FAPIAO_PORT_OFFSET": PORT_OFFSET, "FAPIAO_COMPOSE_DIR": str(run_dir), "FAPIAO_RUN_DIR": str(run_dir)})
    return env


def compose(run_dir: Path, *args: str, timeout_s: float = COMMAND_TIMEOUT_S, check: bool = True) -> None:
    podman_compose = shutil.which("podman-compose", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if podman_compose is None:
        raise PhaseFailed("podman-compose is missing: `make setup` installs it (dev extra)")
    run([podman_compose, "-p", PROJECT, "-f", str(COMPOSE_FILE), *args], timeout_s, check, env=stack_env(run_dir))


def compose_order() -> list[list[str]]:
    """The services of compose.yaml in tiers: each tier depends only on services of earlier tiers."""
    services: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    needs = {name: set(spec.get("depends_on") or {}) for name, spec in services.items()}
    tiers: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(needs):
        tier = sorted(name for name, deps in needs.items() if name not in placed and deps <= placed)
        if not tier:
            raise PhaseFailed(f"compose.yaml: a dependency cycle among {sorted(set(needs) - placed)}")
        tiers.append(tier)
        placed.update(tier)
    return tiers


def container_state(name: str) -> str:
    done = run(["podman", "inspect", "--format", "{{.State.Status}}", name], check=False)
    return done.stdout.strip() if done.returncode == 0 else "missing"


def logs_tail(name: str, lines: int = 25) -> str:
    done = run(["podman", "logs", "--tail", str(lines), name], check=False)
    return (done.stdout or "") + (done.stderr or "")


def wait_until(what: str, ready: Callable[[], bool], failed: Callable[[], str | None], timeout_s: float) -> None:
    """Poll `ready` until it holds; PhaseFailed when `failed` names a reason or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        reason = failed()
        if reason:
            raise PhaseFailed(f"{what}: {reason}")
        if time.monotonic() > deadline:
            raise PhaseFailed(f"{what}: not ready within {timeout_s:.0f} s")
        time.sleep(2)


def wait_healthy(containers: list[str]) -> None:
    """Run each container's own healthcheck until all pass; fail when one exits."""
    pending = list(containers)

    def ready() -> bool:
        for name in list(pending):
            if run(["podman", "healthcheck", "run", name], check=False, timeout_s=30).returncode == 0:
                say(f"  {name:<36} healthy")
                pending.remove(name)
        return not pending

    def failed() -> str | None:
        for name in pending:
            state = container_state(name)
            if state in ("exited", "stopped", "missing"):
                return f"{name} is {state}; last lines of its log:\n{logs_tail(name)}"
        return None

    wait_until("healthchecks", ready, failed, HEALTH_TIMEOUT_S)


def compose_up(run_dir: Path, services: list[list[str]]) -> None:
    """Bring `services` up tier after tier, each tier once the one before is healthy."""
    for tier in services:
        say(f"starting {', '.join(tier)} ...")
        compose(run_dir, "up", "-d", "--no-deps", *tier)
        wait_healthy([f"{PROJECT}_{name}_1" for name in tier])


def init(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    say(f"init step: keys, certificates and env files in {run_dir.relative_to(REPO)} ...")
    run(["bash", str(REPO / "deploy" / "compose" / "init.sh")], env=stack_env(run_dir))


def check_ports_free(run_dir: Path) -> None:
    """Every port the stack will listen on must be free (another stack at the same offset: fail early)."""
    done = run([sys.executable, "-c", PORTS_FREE], check=False, env=stack_env(run_dir))
    if done.returncode != 0:
        raise PhaseFailed(f"ports in use (set FAPIAO_DEPLOY_PORT_OFFSET to another offset): {done.stdout.strip()}")


PORTS_FREE = """
from fapiao_stack.procs import port_bindable
from fapiao_stack.services import KAFKA_CONTROLLER_PORT, KAFKA_PORT, POSTGRES_PORT, local_services
ports = [KAFKA_PORT, KAFKA_CONTROLLER_PORT, POSTGRES_PORT, *(p for s in local_services() for p in s.ports())]
busy = [p for p in ports if not port_bindable(p)]
print(" ".join(map(str, busy)))
raise SystemExit(1 if busy else 0)
"""


def demo(run_dir: Path) -> None:
    say("the demo story against it (the checks of `make demo`):")
    done = run([sys.executable, "-c", DEMO], DEMO_TIMEOUT_S, check=False, quiet=False, env=stack_env(run_dir))
    if done.returncode != 0:
        raise PhaseFailed("the demo story failed (see above)")


@contextmanager
def compose_stack(run_dir: Path) -> Iterator[None]:
    """Whatever happens inside, the compose project's containers and volumes are removed after."""
    try:
        yield
    finally:
        say("stopping the compose stack ...")
        compose(run_dir, "down", "--volumes", "--timeout", "15", timeout_s=180, check=False)
        leftovers = run(["podman", "ps", "-aq", "--filter", f"label=io.podman.compose.project={PROJECT}"], check=False)
        for container in leftovers.stdout.split():
            run(["podman", "rm", "--force", "--time", "5", container], check=False)
        for volume in ("kafka-data", "postgres-data"):
            run(["podman", "volume", "rm", "--force", f"{PROJECT}_{volume}"], check=False)


def monitoring(run_dir: Path) -> None:
    """Debian's Prometheus against the stack: every target it recorded up, the alert rules loaded, the
    dashboard's queries, gRPC metrics and consumer lag; then a validator's container stopped fires
    FapiaoValidatorDown for it alone (the rules' `for:` set to 0 s)."""
    say("Debian's Prometheus against it:")
    targets = stack_targets(run_dir / "stack.json")
    validator = "ledger-4"
    try:
        with prometheus_server(targets, run_dir / "prometheus") as prometheus:
            for line in check_scrapes(prometheus, targets):
                say(f"  {line}")

            def stop() -> None:
                run(["podman", "stop", "--time", "15", f"{PROJECT}_{validator}_1"], timeout_s=60)

            say(f"  {check_validator_down_alert(prometheus, validator, stop)}")
    except (CheckFailed, FileNotFoundError, LookupError) as exc:
        raise PhaseFailed(f"Prometheus: {exc}") from None


def phase_compose() -> None:
    run_dir = WORK / "compose"
    init(run_dir)
    check_ports_free(run_dir)
    with compose_stack(run_dir):
        compose_up(run_dir, compose_order())
        demo(run_dir)
        monitoring(run_dir)


# ---- podman kube play ------------------------------------------------------------------------------------


# Deployment or StatefulSet name in deploy/k8s -> the service of the compose stack whose env file it uses.
def compose_name(workload: str) -> str:
    return workload if workload.startswith("ledger-") else workload.replace("-", "_")


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


LOCAL_PORT_VARIABLES = (
    "FAPIAO_GRPC_PORT",
    "FAPIAO_HTTP_PORT",
    "FAPIAO_WEBHOOK_PORT",
    "FAPIAO_REIMBURSEMENT_TLS_PORT",
    "FAPIAO_INTAKE_ADMIN_PORT",
    "FAPIAO_METRICS_PORT",
)


def playable(run_dir: Path, documents: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """deploy/k8s's Fapiao workloads as `podman kube play` runs them here; returns (documents, what changed).

    Changed, and only this: the shared ConfigMap points at the compose stack's Kafka, database and
    services; each workload runs one replica on the host's network with the ports of the compose stack
    (probes included); a StatefulSet is played as a Deployment of its pod template; Services are left out
    (the host's network needs none)."""
    env_dir = run_dir / "env"
    config = read_env_file(env_dir / "config.env")
    played: list[dict[str, Any]] = []
    for document in documents:
        kind, name = document["kind"], document["metadata"]["name"]
        if kind == "Service":
            continue
        if kind == "ConfigMap" and name == "fapiao-config":
            document = copy.deepcopy(document)
            document["data"].update({k: v for k, v in config.items() if k in document["data"]})
            document["data"].pop("FAPIAO_METRICS_PORT", None)
            played.append(document)
            continue
        if kind not in ("Deployment", "StatefulSet"):
            played.append(document)
            continue
        local = read_env_file(env_dir / f"{compose_name(name)}.env")
        workload = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": copy.deepcopy(document["metadata"]),
            "spec": {
                "replicas": 1,
                "selector": copy.deepcopy(document["spec"]["selector"]),
                "template": copy.deepcopy(document["spec"]["template"]),
            },
        }
        pod = workload["spec"]["template"]["spec"]
        pod["hostNetwork"] = True
        for container in pod["containers"]:
            ports = {}  # manifest port -> local port
            for entry in container.get("env", []):
                if entry["name"] in LOCAL_PORT_VARIABLES and entry["name"] in local:
                    ports[int(entry["value"])] = int(local[entry["name"]])
                    entry["value"] = local[entry["name"]]
            present = {entry["name"] for entry in container.get("env", [])}
            container.setdefault("env", []).extend(
                {"name": key, "value": value}
                for key, value in local.items()
                if key in LOCAL_PORT_VARIABLES and key not in present
            )
            container.pop("ports", None)
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_name)
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    if probe and handler in probe and probe[handler]["port"] in ports:
                        probe[handler]["port"] = ports[probe[handler]["port"]]
        played.append(workload)
    changes = [
        "ConfigMap fapiao-config: Kafka, endpoints and listen addresses of the compose stack, RF 1 (one broker)",
        "every workload: one replica, hostNetwork, the compose stack's ports (env and probes), no containerPorts",
        "StatefulSets ledger-1..4: played as Deployments of their pod template",
        "Services: left out (one network, the host's)",
    ]
    return played, changes


def load_documents(*files: Path) -> list[dict[str, Any]]:
    return [document for path in files for document in yaml.safe_load_all(path.read_text()) if document]


def phase_kube() -> None:
    run_dir = WORK / "kube"
    init(run_dir)
    check_ports_free(run_dir)
    postgres_port = read_env_file(run_dir / "env" / "postgres.env")["PGPORT"]
    secrets = run(
        [
            sys.executable,
            str(K8S_DIR / "make_secrets.py"),
            str(run_dir),
            "--database-host",
            f"127.0.0.1:{postgres_port}",
        ],
        env=stack_env(run_dir),
    ).stdout
    manifests = load_documents(K8S_DIR / "config.yaml", K8S_DIR / "ledger.yaml", K8S_DIR / "services.yaml")
    played, changes = playable(run_dir, [*yaml.safe_load_all(secrets), *manifests])
    play_file = run_dir / "play.yaml"
    say("played as: " + "; ".join(changes))
    secret_documents = [d for d in played if d["kind"] == "Secret"]
    play_file.write_text(yaml.safe_dump_all([d for d in played if d["kind"] != "Secret"], sort_keys=False))
    with compose_stack(run_dir), kube_stack(play_file, [d["metadata"]["name"] for d in secret_documents]):
        # podman 4.3 has no kind: Secret in kube play: it reads a pod's Secrets from its own secret store,
        # a volume's as the Kubernetes Secret document (its data, which podman before 4.4 writes into the
        # files without decoding it from base64), an envFrom's as a JSON map of base64 values.
        as_env = env_secrets(played)
        raw_volume_data = podman_version() < (4, 4)
        for document in secret_documents:
            secret_file = run_dir / f"secret-{document['metadata']['name']}.json"
            plain = document["stringData"]
            encoded = {key: base64.b64encode(value.encode()).decode() for key, value in plain.items()}
            stored: dict[str, Any] = encoded
            if document["metadata"]["name"] not in as_env:
                stored = {key: value for key, value in document.items() if key != "stringData"}
                stored["data"] = plain if raw_volume_data else encoded
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(stored, handle)
            run(["podman", "secret", "create", document["metadata"]["name"], str(secret_file)])
            secret_file.unlink()
        compose_up(run_dir, [list(INFRASTRUCTURE)])
        say(f"podman kube play {play_file.relative_to(REPO)} ...")
        run(["podman", "kube", "play", "--start", str(play_file)], timeout_s=COMMAND_TIMEOUT_S)
        wait_serving(run_dir, [d["metadata"]["name"] for d in played if d["kind"] == "Deployment"])
        demo(run_dir)


def podman_version() -> tuple[int, int]:
    text = run(["podman", "version", "--format", "{{.Client.Version}}"]).stdout.strip()
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def env_secrets(documents: list[dict[str, Any]]) -> set[str]:
    """Names of the Secrets some workload reads through envFrom."""
    names = set()
    for document in documents:
        if document["kind"] == "Deployment":
            for container in document["spec"]["template"]["spec"]["containers"]:
                names.update(s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s)
    return names


@contextmanager
def kube_stack(play_file: Path, secrets: list[str]) -> Iterator[None]:
    """Whatever happens inside, the played pods and the podman secrets are removed after."""
    pods = [
        f"{d['metadata']['name']}-pod-0" for d in yaml.safe_load_all(play_file.read_text()) if d["kind"] == "Deployment"
    ]

    def remove() -> None:
        run(["podman", "kube", "down", str(play_file)], timeout_s=180, check=False)
        # What `kube down` leaves of a play that failed half-way.
        for pod in pods:
            run(["podman", "pod", "rm", "--force", "--ignore", pod], timeout_s=120, check=False)
        run(["podman", "secret", "rm", *secrets], check=False)
        # podman 4.3 copies a Secret mounted as a volume into a named volume of the Secret's name, which
        # `kube down` keeps: the keys must not outlive the run.
        for name in secrets:
            run(["podman", "volume", "rm", "--force", name], check=False)

    remove()  # a run that was killed may have left them
    try:
        yield
    finally:
        say("podman kube down ...")
        remove()


SERVING = """
import asyncio, json, sys
from fapiao_stack.services import health_of, local_services
async def main():
    return {s.name: await health_of(s) for s in local_services()}
print(json.dumps(asyncio.run(main())))
"""


def wait_serving(run_dir: Path, workloads: list[str]) -> None:
    """Every service SERVING on its port (asked from the host, as `fapiao status` does)."""
    seen: dict[str, str] = {}

    def ready() -> bool:
        done = run([sys.executable, "-c", SERVING], check=False, env=stack_env(run_dir), timeout_s=60)
        seen.clear()
        seen.update(json.loads(done.stdout or "{}"))
        return bool(seen) and all(status == "SERVING" for status in seen.values())

    def failed() -> str | None:
        pods = run(["podman", "pod", "ps", "--format", "{{.Name}} {{.Status}}"], check=False).stdout.split("\n")
        for line in pods:
            name, _, status = line.partition(" ")
            if name.removesuffix("-pod-0") in workloads and status in ("Exited", "Dead"):
                return f"pod {name} {status}; {json.dumps(seen)}"
        return None

    try:
        wait_until("kube play workloads", ready, failed, HEALTH_TIMEOUT_S)
    except PhaseFailed:
        for workload in workloads:
            say(f"--- {workload}\n{logs_tail(f'{workload}-pod-0-{workload_container(workload)}', 10)}")
        raise
    for name, status in seen.items():
        say(f"  {name:<36} {status}")


def workload_container(workload: str) -> str:
    return "validator" if workload.startswith("ledger-") else workload


# What the service image must hold: a CJK font the PDF renderer finds, a non-root user, no dev extra.
IMAGE_CHECK = """
import importlib.util, os, sys
from gateway.pdf import choose_font
font = choose_font()
dev = [m for m in ("pytest", "ruff", "mypy", "playwright", "grpc_tools", "hypothesis") if importlib.util.find_spec(m)]
print(f"  PDF font {font.path} (CJK: {font.has_cjk}); uid {os.getuid()}; dev packages: {dev or 'none'}")
sys.exit(0 if font.has_cjk and os.getuid() != 0 and not dev else 1)
"""


def phase_image() -> None:
    image = os.environ.get("FAPIAO_IMAGE", "localhost/fapiao:latest")
    argv = ["podman", "run", "--rm", "--network", "none", "--health-cmd", "none", "--entrypoint", "python", image]
    done = run([*argv, "-c", IMAGE_CHECK], check=False)
    say(done.stdout.rstrip())
    if done.returncode != 0:
        raise PhaseFailed(f"{image}: a CJK font, a non-root user and no dev extra expected\n{done.stderr[-2000:]}")


def leftovers() -> list[str]:
    """What a run may leave and must not: the compose project's containers and volumes, the played pods,
    the Secrets' podman secrets and volumes."""
    workloads = [
        d for d in load_documents(K8S_DIR / "ledger.yaml", K8S_DIR / "services.yaml") if "template" in d["spec"]
    ]
    pods = {f"{d['metadata']['name']}-pod-0" for d in workloads}
    secrets = set()
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        secrets |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for container in pod["containers"]:
            secrets |= {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
    found = run(["podman", "ps", "-aq", "--filter", f"label=io.podman.compose.project={PROJECT}"], check=False)
    left = [f"container {c}" for c in found.stdout.split()]
    listed = run(["podman", "pod", "ps", "--format", "{{.Name}}"], check=False).stdout.split()
    left += [f"pod {p}" for p in listed if p in pods]
    listed = run(["podman", "volume", "ls", "--format", "{{.Name}}"], check=False).stdout.split()
    left += [f"volume {v}" for v in listed if v in secrets or v.startswith(f"{PROJECT}_")]
    listed = run(["podman", "secret", "ls", "--format", "{{.Name}}"], check=False).stdout.split()
    left += [f"secret {v}" for v in listed if v in secrets]
    return left


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    # A SIGTERM (a CI timeout, say) unwinds like ^C: every phase removes what it started on the way out.
    signal.signal(signal.SIGTERM, _interrupted)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("image", "compose", "kube"), help="run one phase only")
    args = parser.parse_args(argv)
    phases = {"image": phase_image, "compose": phase_compose, "kube": phase_kube}
    results: dict[str, str] = {}
    for name, phase in phases.items():
        if args.only and name != args.only:
            continue
        started = time.monotonic()
        say(f"\n=== {name} ===")
        try:
            phase()
            results[name] = f"passed in {time.monotonic() - started:.0f} s"
        except PhaseFailed as exc:
            say(f"FAILED: {exc}")
            results[name] = f"FAILED after {time.monotonic() - started:.0f} s"
    left = leftovers()
    if left:
        results["clean-up"] = "FAILED, left: " + ", ".join(left)
    say("\n" + "\n".join(f"deploy-test {name}: {result}" for name, result in results.items()))
    return 0 if all(result.startswith("passed") for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
