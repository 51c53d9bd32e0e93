"""End to end on a real Docker engine: build the images, ``up``, run the experiment in the
orchestrator container, check records against Prometheus, evaluate every Grafana panel, ``down``;
for the committed docker-compose.yml (experiments/seed.yaml) and for the file ``edgebed compose
render`` writes for experiments/hierarchical.yaml (multi-hop paths through the link proxy).

The test starts its own ``dockerd`` (docker/dockerd.sh: own data root, exec root, pidfile and
socket; stopped by PID), builds the base image with debootstrap (docker/base-image.sh, cached)
because no image registry is assumed, and builds Prometheus from Debian's package
(docker/prometheus.Dockerfile). Grafana's image is laptop-only: its profile stays off here, but
every query of its dashboard is evaluated against the stack's real Prometheus.

The images are built from a copy of the work tree (tracked and untracked, not ignored files), with
the host's CA bundle added as ``certs/host-ca.crt``: builds reach PyPI through a TLS-intercepting
proxy on CI machines. ``EDGEBED_CACHE_DIR`` (default ``.edgebed/cache``) keeps the debootstrap
tarball and the engine's data root between runs.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "observability" / "grafana"))
import build_dashboard  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
TIER_MAX_BYTES = 300 * 1000 * 1000  # "300 MB" as docker reports sizes
PROJECT = "edgebed-e2e"
TAG = "e2e"
BASE = "edgebed/base:bookworm"
PROM_IMAGE = f"edgebed/prometheus:{TAG}"
N_REQUESTS = int(os.environ.get("EDGEBED_E2E_N", "6"))
UP_TIMEOUT_S = 600.0


def _missing_capability() -> str | None:
    if os.geteuid() != 0:
        return "needs root to start a private Docker engine"
    for tool, pkg in (("dockerd", "docker.io"), ("docker", "docker.io"),
                      ("docker-compose", "docker-compose"), ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {pkg})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Timer:
    """Phase durations, printed live on the terminal (not captured) and summed at the end."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.t0 = time.monotonic()
        self.phases: list[tuple[str, float]] = []
        self._last = self.t0

    def mark(self, phase: str) -> None:
        now = time.monotonic()
        took, self._last = now - self._last, now
        self.phases.append((phase, took))
        self.say(f"[compose e2e] {phase}: {took:.1f} s (total {now - self.t0:.1f} s)")


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None,
        timeout_s: float = 900) -> str:
    res = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=timeout_s, check=False)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({res.returncode}):\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res.stdout


@pytest.fixture(scope="module")
def engine() -> Iterator[dict[str, str]]:
    reason = _missing_capability()
    if reason:
        pytest.skip(reason)
    cache = Path(os.environ.get("EDGEBED_CACHE_DIR", REPO / ".edgebed" / "cache"))
    state = cache / "docker"
    env = {**os.environ, "EDGEBED_CACHE_DIR": str(cache)}
    out = run(["bash", str(REPO / "docker" / "dockerd.sh"), "start", str(state)], env)
    env["DOCKER_HOST"] = out.strip().rsplit("=", 1)[1]
    try:
        yield env
    finally:
        subprocess.run(["bash", str(REPO / "docker" / "dockerd.sh"), "stop", str(state)],
                       env=env, check=False, timeout=60)


def build_context(dest: Path) -> Path:
    """A copy of the work tree as git sees it (tracked + untracked, minus ignored) + host CA."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for raw in filter(None, files):
        rel = raw.decode()
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if HOST_CA.exists():
        shutil.copy(HOST_CA, dest / "certs" / "host-ca.crt")
    # Development aid: try the stack with other model/data files than the committed ones.
    for var, sub in (("EDGEBED_E2E_MODELS_FROM", "models"), ("EDGEBED_E2E_DATA_FROM", "data")):
        if src_dir := os.environ.get(var):
            for f in Path(src_dir).iterdir():
                if f.is_file():
                    shutil.copy(f, dest / sub / f.name)
    (dest / "runs").mkdir(exist_ok=True)
    return dest


def expected_backend() -> str:
    """What ``auto`` must pick here: tc when a fresh network namespace accepts netem."""
    ns = f"edgebed-e2e-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace to check for sch_netem")
    try:
        res = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo",
                              "root", "netem", "delay", "1ms"], capture_output=True)
        return "tc" if res.returncode == 0 else "proxy"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def prom_query(client: httpx.Client, url: str, query: str) -> list[dict]:
    r = client.get(f"{url}/api/v1/query", params={"query": query})
    r.raise_for_status()
    return r.json()["data"]["result"]


def prom_range(client: httpx.Client, url: str, query: str, start: float, end: float,
               step_s: float) -> list[dict]:
    r = client.get(f"{url}/api/v1/query_range",
                   params={"query": query, "start": start, "end": end, "step": step_s})
    if r.status_code != 200:
        raise AssertionError(f"query failed ({r.status_code}): {query}\n{r.text[:500]}")
    return r.json()["data"]["result"]


def panel_queries(run_name: str, rate_interval: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target, with Grafana's variables filled in."""
    out = []
    for panel in build_dashboard.build()["panels"]:
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$run", run_name).replace("$policy", ".*")
                    .replace("$__rate_interval", rate_interval))
            out.append((f"{panel['title']} [{target['refId']}]", expr))
    return out


def say(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """A writer of live progress lines on the terminal (not captured)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None or capman is None:
            print(line, file=sys.stderr)
            return
        with capman.global_and_fixture_disabled():  # live progress, not captured
            reporter.write_line(line)

    return write


@pytest.fixture(scope="module")
def images(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[tuple[Path, dict[str, str], Timer]]:
    """The base image, Prometheus, the tier image (one for every node) and the orchestrator,
    built once from a copy of the work tree; yields (that copy, the engine's env, a timer)."""
    timer = Timer(say(request))
    env = engine
    run(["bash", str(REPO / "docker" / "base-image.sh"), BASE], env, timeout_s=1200)
    timer.mark("base image (debootstrap, cached tarball)")
    # Prometheus from Debian's package (apt: network-bound) builds while pip builds the images
    prom_build = subprocess.Popen(
        ["docker", "build", "-q", "-f", str(REPO / "docker" / "prometheus.Dockerfile"),
         "--build-arg", f"BASE_IMAGE={BASE}", "-t", PROM_IMAGE, str(REPO / "docker")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = build_context(tmp_path_factory.mktemp("ctx") / "edgebed")
    (ctx / ".env").write_text(f"EDGEBED_TAG={TAG}\nEDGEBED_BASE_IMAGE={BASE}\n")
    compose = ["docker-compose", "--project-directory", str(ctx), "-f",
               str(ctx / "docker-compose.yml")]
    cenv = {k: v for k, v in env.items() if not k.startswith(("COMPOSE_", "EDGEBED_"))}
    # every node's service names the same tier image: building one builds it for all
    for service in ("mcu", "orchestrator"):
        run([*compose, "build", service], cenv, timeout_s=1200)
    out, _ = prom_build.communicate(timeout=900)
    assert prom_build.returncode == 0, f"prometheus image build failed:\n{out[-3000:]}"
    timer.mark("build the tier and orchestrator images (+ prometheus in parallel)")
    sizes = {}
    for name in ("tier", "orchestrator"):
        out = run(["docker", "image", "inspect", "--format", "{{.Size}}",
                   f"edgebed/{name}:{TAG}"], env)
        sizes[name] = int(out.strip())
    timer.say("[compose e2e] image sizes (MB): "
              + ", ".join(f"{k} {v / 1e6:.0f}" for k, v in sizes.items()))
    assert sizes["tier"] <= TIER_MAX_BYTES, f"tier image {sizes['tier'] / 1e6:.0f} MB > 300 MB"
    yield ctx, env, timer
    total = sum(d for _, d in timer.phases)
    timer.say(f"[compose e2e] total {total:.1f} s: "
              + "; ".join(f"{p} {d:.0f} s" for p, d in timer.phases))


def run_stack(ctx: Path, env: dict[str, str], timer: Timer, compose_file: str, project: str,
              nodes: list[str], check: Callable[[Path, dict[str, int]], None]) -> None:
    """``up`` the compose file (Grafana's profile off, free host ports for ``nodes`` and the
    stack), wait for the orchestrator's run, ``check`` it, ``down -v``."""
    ports = {re.sub(r"[^A-Z0-9]", "_", n.upper()): _free_port() for n in nodes}
    ports.update({k: _free_port() for k in ("PROMETHEUS", "ORCHESTRATOR", "LINKS", "GRAFANA")})
    dotenv = {
        "COMPOSE_PROJECT_NAME": project,
        "COMPOSE_PROFILES": "",  # no Grafana image here (laptop-only)
        "EDGEBED_TAG": TAG,
        "EDGEBED_BASE_IMAGE": BASE,
        "EDGEBED_PROMETHEUS_IMAGE": PROM_IMAGE,
        "EDGEBED_N": str(N_REQUESTS),
        "EDGEBED_LINK_BACKEND": "auto",
        **{f"EDGEBED_{k}_PORT": str(v) for k, v in ports.items()},
        "EDGEBED_CLOUD_CPUS": str(min(2.0, float(os.cpu_count() or 1))),
    }
    (ctx / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    compose = ["docker-compose", "--project-directory", str(ctx), "-f", str(ctx / compose_file)]
    cenv = {k: v for k, v in env.items() if not k.startswith(("COMPOSE_", "EDGEBED_"))}
    runs = ctx / "runs"
    before = set(runs.glob("*/DONE"))
    try:
        run([*compose, "up", "-d"], cenv, timeout_s=UP_TIMEOUT_S)
        timer.mark(f"{compose_file}: up (nodes healthy, orchestrator started)")
        deadline = time.monotonic() + UP_TIMEOUT_S
        done: list[Path] = []
        while not done:
            done = [d for d in runs.glob("*/DONE") if d not in before]
            cid = run([*compose, "ps", "-q", "orchestrator"], cenv).strip()
            state = run(["docker", "inspect", "--format", "{{.State.Status}}", cid],
                        env).strip() if cid else "missing"
            if not done and (state in ("exited", "dead") or time.monotonic() > deadline):
                logs = run([*compose, "logs", "--no-color", "--tail", "80"], cenv)
                raise AssertionError(f"orchestrator {state}, no finished run:\n{logs}")
            time.sleep(1)
        timer.mark(f"{compose_file}: experiment run in the orchestrator container "
                   f"(n={N_REQUESTS})")
        check(done[0].parent, ports)
        timer.mark(f"{compose_file}: checks (records, links, Prometheus, dashboard queries)")
    finally:
        subprocess.run([*compose, "down", "-v", "--timeout", "10"], env=cenv,
                       capture_output=True, timeout=300, check=False)
        timer.mark(f"{compose_file}: down")


@pytest.mark.timeout(1800)
def test_compose_stack_end_to_end(images: tuple[Path, dict[str, str], Timer]) -> None:
    """The committed docker-compose.yml (experiments/seed.yaml): three nodes one link away,
    the backend auto picks for this kernel."""
    ctx, env, timer = images

    def check(run_dir: Path, ports: dict[str, int]) -> None:
        info, _ = check_run(run_dir, ports, expected_backend())
        assert {r["link"] for r in info["link_fidelity"]} == {
            "device-mcu", "device-edge", "device-cloud"}

    run_stack(ctx, env, timer, "docker-compose.yml", PROJECT, ["mcu", "edge", "cloud"], check)


@pytest.mark.timeout(1800)
def test_rendered_hierarchy_crosses_every_hop(images: tuple[Path, dict[str, str], Timer]) -> None:
    """``edgebed compose render`` of experiments/hierarchical.yaml (device → edge-1 → regional
    → cloud) on the real engine: the link proxy chains the hops (tc, where the kernel has it,
    is refused with the reason), every request crosses each hop of its node's path once (the
    proxy's counters per pass), run.json holds each path's fidelity and records.csv each
    record's path."""
    ctx, env, timer = images
    out = "docker-compose.hierarchical.yml"
    subprocess.run([sys.executable, "-m", "orchestrator.cli", "compose", "render", "--config",
                    "experiments/hierarchical.yaml", "--out", out], cwd=ctx, check=True,
                   capture_output=True, text=True)
    hops = {"mcu": ["device-mcu"], "edge-1": ["device-edge-1"],
            "regional": ["device-edge-1", "edge-1-regional"],
            "cloud": ["device-edge-1", "edge-1-regional", "regional-cloud"]}

    def check(run_dir: Path, ports: dict[str, int]) -> None:
        info, records = check_run(run_dir, ports, "proxy")
        if expected_backend() == "tc":  # auto found netem, and refused it for the paths
            assert "cannot chain a path's hops" in info["link_backend"]["reason"]
        assert info["topology"]["nodes"]["cloud"]["path"] == hops["cloud"]
        reports = {r["link"]: r for r in info["link_fidelity"]}
        assert {k: r["kind"] for k, r in reports.items()} == {
            "device-mcu": "link", "device-edge-1": "link", "path-regional": "path",
            "path-cloud": "path"}
        assert reports["path-cloud"]["configured"]["mean_ms"] == pytest.approx(48.0)
        # records name the path of the node that answered, and each hop's time on it (the
        # proxy's hop log)
        for r in records:
            assert r["path"] == ">".join(hops[r["node"]]), r
            assert list(json.loads(r["hop_ms"])) == hops[r["node"]], r["hop_ms"]
        assert {r["node"] for r in records if r["policy"] == "always_cloud"} == {"cloud"}
        regional = [p for p in info["policies"] if "regional" in p]
        assert {r["node"] for r in records if r["policy"] in regional} == {"regional"}
        # each hop drew one delay per attempt crossing it, pass by pass (the proxy's counters);
        # device-mcu (rtt_range_ms [0, 0]) draws none: the proxy forwards it at once and counts
        # the chunks it forwarded
        observed = info["observed"]
        zero = {"device-mcu"}

        def kind(hop: str) -> str:
            return "chunks" if hop in zero else "messages"

        marks = [f"start {p}" for p in info["policies"]] + ["end"]
        for start, end in itertools.pairwise(marks):
            policy = start.removeprefix("start ")
            want = dict.fromkeys(sorted({h for hs in hops.values() for h in hs}), 0)
            for r in records:
                if r["policy"] == policy:
                    for route in r["attempts"].split(">"):
                        for h in hops[route.split("/")[0]]:
                            want[h] += 1
            got = {h: observed[end][h]["up"][kind(h)] - observed[start][h]["up"][kind(h)]
                   for h in want}
            for h in zero:  # a chunk or more per attempt, none without
                got[h] = want[h] if got[h] >= want[h] and (got[h] > 0) == (want[h] > 0) \
                    else got[h]
            assert got == want, (policy, got, want)

    run_stack(ctx, env, timer, out, f"{PROJECT}-hier", list(hops), check)


@pytest.mark.timeout(1800)
def test_rendered_multi_edge_sends_from_every_device(
        images: tuple[Path, dict[str, str], Timer]) -> None:
    """``edgebed compose render`` of experiments/multi-edge.yaml on the real engine: 24
    devices in three cells, five nodes (one a GPU); every device's requests are recorded under
    its id and group, each cell reaches the nodes through its own link and paths, and the
    fidelity report covers the cells' links and paths. The congested cell may see its edge's
    queue fill (503, ``overloaded``): recorded, nothing lost."""
    ctx, env, timer = images
    out = "docker-compose.multi-edge.yml"
    subprocess.run([sys.executable, "-m", "orchestrator.cli", "compose", "render", "--config",
                    "experiments/multi-edge.yaml", "--out", out], cwd=ctx, check=True,
                   capture_output=True, text=True)
    nodes = ["edge-1", "edge-2", "edge-3", "cloud", "gpu-1"]

    def check(run_dir: Path, ports: dict[str, int]) -> None:
        info, records = check_run(run_dir, ports, "proxy", devices=24,
                                  outcomes=("ok", "overloaded"))
        for policy in info["policies"]:
            mine = [r for r in records if r["policy"] == policy]
            assert len({r["device"] for r in mine}) == 24, policy
            assert {r["group"] for r in mine} == {"cell-1", "cell-2", "cell-3"}
        near = {(r["group"], r["node"]) for r in records if r["policy"] == "nearest"}
        assert near == {("cell-1", "edge-1"), ("cell-2", "edge-2"), ("cell-3", "edge-3")}
        gpu = {r["path"] for r in records if r["node"] == "gpu-1"}
        assert gpu == {f"cell-{i}-up>edge-{i}-cloud>cloud-gpu-1" for i in (1, 2, 3)}
        kinds = {r["link"]: r["kind"] for r in info["link_fidelity"]}
        assert kinds["cell-3-up"] == "link" and kinds["path-cell-3-edge-1"] == "path"
        assert len(kinds) == 11, kinds  # 3 access links + 8 paths (cell-3 reaches 2 more edges)
        assert (run_dir / "summary_groups.csv").exists()

    run_stack(ctx, env, timer, out, f"{PROJECT}-multi", nodes, check)


def check_run(run_dir: Path, ports: dict[str, int], backend: str, devices: int = 1,
              outcomes: tuple[str, ...] = ("ok",)) -> tuple[dict, list[dict[str, str]]]:
    """Every record answered (or one of ``outcomes``), the link backend, each link's or path's
    fidelity, Prometheus totals equal to the records (every node scraped), every dashboard
    query with data."""
    info = json.loads((run_dir / "run.json").read_text())
    with (run_dir / "records.csv").open() as f:
        records = list(csv.DictReader(f))
    policies = info["policies"]
    assert len(records) == N_REQUESTS * devices * len(policies), (len(records), policies)
    bad = [r for r in records if r["outcome"] not in outcomes]
    assert not bad, f"{len(bad)} records not ok, e.g. {bad[0]}"
    assert (run_dir / "summary.csv").exists()

    # links: the backend auto picked, with its reason, and a fidelity report per link or path
    assert info["link_backend"]["backend"] == backend, info["link_backend"]
    assert info["link_backend"]["reason"]
    assert info["link_fidelity"], info.get("link_fidelity_error")
    for rep in info["link_fidelity"]:
        assert "error" not in rep, rep
        cfg_mean, ach = rep["configured"]["mean_ms"], rep["achieved"]
        tol = 5 * ach["std_ms"] / math.sqrt(rep["n"]) + 3.0
        assert abs(ach["mean_ms"] - cfg_mean) <= tol, (
            f"{rep['link']}: configured mean RTT {cfg_mean:.1f} ms, achieved "
            f"{ach['mean_ms']:.1f} ms (tolerance {tol:.1f} ms)")

    prom = f"http://127.0.0.1:{ports['PROMETHEUS']}"
    with httpx.Client(timeout=10, trust_env=False) as client:
        # Prometheus totals equal the records
        def by_policy(query: str) -> dict[str, float]:
            return {r["metric"]["policy"]: float(r["value"][1])
                    for r in prom_query(client, prom, query)}

        for metric, column in (("edgebed_orchestrator_requests_total", None),
                               ("edgebed_orchestrator_correct_total", "correct"),
                               ("edgebed_orchestrator_deadline_met_total", "deadline_met")):
            got = by_policy(f"sum by (policy) ({metric})")
            want = {p: float(sum(1 for r in records if r["policy"] == p
                                 and (column is None or r[column] in ("True", "true", "1"))))
                    for p in policies}
            assert got == want, f"{metric}: Prometheus {got} vs records {want}"
        energy = by_policy('sum by (policy) (edgebed_orchestrator_energy_joules_total'
                           '{scope="system"})')
        for p in policies:
            want_j = sum(float(r["system_energy_mj"]) for r in records
                         if r["policy"] == p) / 1e3
            assert energy[p] == pytest.approx(want_j, rel=1e-6, abs=1e-9), (p, energy, want_j)
        # every node was found and scraped (DNS discovery of the nodes' network alias)
        scraped = {r["metric"]["tier"] for r in prom_query(client, prom, "edgebed_tier_ready")}
        assert scraped == set(info["topology"]["nodes"]), scraped
        attempts = sum(int(r["n_attempts"]) for r in records)
        tier_total = sum(float(r["value"][1]) for r in prom_query(
            client, prom, "sum(edgebed_requests_total)"))
        assert tier_total == attempts, f"tiers counted {tier_total} requests, records {attempts}"

        # every Grafana panel query returns data
        start = dt.datetime.fromisoformat(info["started_utc"]).timestamp() - 60
        end = time.time()
        empty = []
        for title, expr in panel_queries(info["stack"]["run"], "5s"):
            series = prom_range(client, prom, expr, start, end, 2.0)
            values = [float(v) for s in series for _, v in s["values"]]
            if not any(math.isfinite(v) for v in values):
                empty.append(f"{title}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
    return info, records
