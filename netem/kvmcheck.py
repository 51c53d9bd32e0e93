"""tc netem fidelity checks on a kernel that has netem: plan on the host, run in a guest, judge
on the host.

The host builds everything with the links backend's own pure builders (``netem.tc``): the
``tc``/``ip`` argv lists and the integer-RTT distribution table. The guest (see
``netem.kvmguest``) gets them as a JSON plan and, using the standard library only (importing
numpy/scipy under qemu's software CPU costs minutes), runs them in a two-namespace veth topology:
client namespace ``edgebed-a`` (device ``va``, shaped: ``up`` on egress, ``down`` on ingress via
ifb), server namespace ``edgebed-b`` (device ``vb``, one address per link so each link gets its own
per-destination class). It times echo round trips (64-byte messages one at a time, TCP_NODELAY,
like ``netem.probe.measure_rtts``), a bulk transfer through the rate-limited link and the netem
qdisc counters, and writes raw samples back. The host then compares them with the configured laws
through ``netem.probe.fidelity_report`` (mean within max(0.5 ms, 2 %), KS p >= 0.01), checks the
rate (0.95–1.05 of configured) and the loss ratio counted by netem.

Module level imports are standard library only: the guest runs ``python -m netem.kvmcheck guest``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CLIENT_NS = "edgebed-a"
SERVER_NS = "edgebed-b"
CLIENT_DEV = "va"
SERVER_DEV = "vb"
SUBNET = "10.77.0"
CLIENT_IP = f"{SUBNET}.1"
ECHO_PORT = 7007
PAYLOAD_BYTES = 64

# The acceptance checks of issue 4, as link configs (LinkSpec shorthand) and probe counts.
DELAY_CHECKS: dict[str, dict[str, Any]] = {
    # RTT fixed 10 ms: 5 ms each way, so the ingress (ifb) path is exercised too.
    "fixed_10ms": {"delay_ms": 5},
    # The teaching simulator's RTT: integer-uniform 30..120 ms (generated netem table).
    "uniform_30_120": {"rtt_range_ms": [30, 120]},
    # RTT normal 50 ± 10 ms with iproute2's normal.dist table.
    "normal_50_10": {"up": {"delay_ms": 50, "jitter_ms": 10, "distribution": "normal"}},
}
LOSS_CHECK = ("loss_5pct", {"up": {"delay_ms": 10, "loss_pct": 5}})
RATE_CHECK = ("rate_1mbit", {"up": {"rate_mbit": 1}})
RATE_TOLERANCE = (0.95, 1.05)
MEAN_Z = 3.3  # probe counts make the mean tolerance this many standard errors wide
LOSS_Z = 3.3  # the loss ratio must lie within ~3.3 binomial standard errors (two-sided ~0.1 %)


# ---------------------------------------------------------------- host: plan


def probes_needed(link: Any, n_min: int, z: float = MEAN_Z) -> int:
    """Probes so that the mean tolerance max(0.5 ms, 2 %) is ``z`` standard errors wide.

    netem draws from the kernel's unseeded generator, so a run is one random sample: with 500
    probes of the integer-uniform 30..120 ms RTT (std 26.3 ms) the 1.5 ms tolerance is only 1.3
    standard errors and a faithful netem would fail ~20 % of runs. Never fewer than ``n_min``.
    """
    import numpy as np

    std = float(np.std(link.rtt_samples(200_000, np.random.default_rng(1))))
    tol = max(0.5, 0.02 * link.rtt_mean_ms())
    return max(n_min, math.ceil((z * std / tol) ** 2))



def build_plan(n: int = 500, *, n_loss: int = 1000, n_baseline: int = 200,
               throughput_bytes: int = 250_000, python: str = sys.executable,
               lib_dir: Path | None = None, parallel: bool = False) -> dict[str, Any]:
    """The JSON plan the guest executes: setup, shaping argvs, probes, throughput.

    Links are probed one after another (``parallel`` probes them at once: faster, but the
    probes then compete for the guest's one CPU).

    ``lib_dir`` (a host folder the guest can read, e.g. the guest I/O share) receives the
    distribution tables; its path is passed to tc as ``TC_LIB_DIR``.
    """
    from netem import tc
    from netem.spec import LinkSpec

    configs = dict([*DELAY_CHECKS.items(), LOSS_CHECK, RATE_CHECK])
    links = {name: LinkSpec.model_validate(cfg) for name, cfg in configs.items()}
    peers = {name: f"{SUBNET}.{10 + i}" for i, name in enumerate(links)}
    env: dict[str, str] = {}
    if lib_dir is not None:
        lib_dir.mkdir(parents=True, exist_ok=True)
        for std in tc.STANDARD_TC_LIB_DIRS:  # keep normal/pareto reachable, as tc.apply does
            for table in sorted(Path(std).glob("*.dist")) if Path(std).is_dir() else ():
                (lib_dir / table.name).write_bytes(table.read_bytes())
        for link in links.values():
            for d in (link.up, link.down):
                if d.integer_ms and d.jitter_ms:
                    tc.write_dist_table(d, lib_dir)
        env["TC_LIB_DIR"] = str(lib_dir)
    setup = [
        ["ip", "netns", "add", CLIENT_NS],
        ["ip", "netns", "add", SERVER_NS],
        ["ip", "link", "add", CLIENT_DEV, "netns", CLIENT_NS, "type", "veth",
         "peer", "name", SERVER_DEV, "netns", SERVER_NS],
        tc.in_netns(["ip", "addr", "add", f"{CLIENT_IP}/24", "dev", CLIENT_DEV], CLIENT_NS),
        *[tc.in_netns(["ip", "addr", "add", f"{ip}/24", "dev", SERVER_DEV], SERVER_NS)
          for ip in peers.values()],
        *[tc.in_netns(["ip", "link", "set", dev, "up"], ns)
          for ns, dev in ((CLIENT_NS, "lo"), (CLIENT_NS, CLIENT_DEV),
                          (SERVER_NS, "lo"), (SERVER_NS, SERVER_DEV))],
    ]
    # Run inside the client namespace (the guest's client process lives there): no prefix.
    shape = tc.build_apply_argvs(links, CLIENT_DEV, peer_ips=peers)
    probes = [{"name": name, "ip": peers[name], "n": probes_needed(links[name], n)}
              for name in DELAY_CHECKS]
    probes.append({"name": LOSS_CHECK[0], "ip": peers[LOSS_CHECK[0]], "n": n_loss})
    return {
        "python": python,
        "parallel": parallel,
        "setup": setup,
        "clear": tc.build_clear_argvs(CLIENT_DEV),
        "shape": shape,
        "env": env,
        "port": ECHO_PORT,
        "server_ips": list(peers.values()),
        "baseline": {"ip": peers[next(iter(DELAY_CHECKS))], "n": n_baseline},
        "probes": probes,
        "throughput": {"name": RATE_CHECK[0], "ip": peers[RATE_CHECK[0]],
                       "bytes": throughput_bytes},
        "stats_devs": [CLIENT_DEV, tc.ifb_name(CLIENT_DEV)],
        "links": configs,
        "peers": peers,
    }


# ---------------------------------------------------------------- guest: stdlib only


def _uptime_s() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def _run(argv: Sequence[str], env: dict[str, str] | None = None,
         check: bool = True) -> dict[str, Any]:
    full_env = {**os.environ, **(env or {})}
    res = subprocess.run(list(argv), capture_output=True, text=True, env=full_env, check=False)
    step = {"argv": list(argv), "rc": res.returncode, "stderr": res.stderr.strip()}
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return step


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except OSError:
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def guest_serve(ips: Sequence[str], port: int) -> None:
    """Echo servers on ``ips`` (server namespace); prints one ready line, runs until killed."""
    servers = [_EchoServer((ip, port), _EchoHandler) for ip in ips]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print(json.dumps({"ready": True}), flush=True)
    threading.Event().wait()


def _connect(ip: str, port: int, timeout_s: float = 30.0) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock = socket.create_connection((ip, port), timeout=timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def guest_rtts(ip: str, port: int, n: int, warmup: int = 3) -> list[float]:
    """``n`` echo round trips in ms, one 64-byte message at a time on one connection."""
    msg = b"p" * PAYLOAD_BYTES
    out: list[float] = []
    with _connect(ip, port) as sock:
        for i in range(n + warmup):
            t0 = time.perf_counter_ns()
            sock.sendall(msg)
            got = 0
            while got < len(msg):
                chunk = sock.recv(len(msg) - got)
                if not chunk:
                    raise ConnectionError("echo server closed the connection")
                got += len(chunk)
            if i >= warmup:
                out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def guest_throughput(ip: str, port: int, n_bytes: int, chunk_bytes: int = 16384) -> dict[str, float]:
    """Bulk echo transfer; ``rate_mbit`` = bytes after the first read / (last - first read)
    (same definition as ``netem.probe.measure_throughput``)."""
    payload = bytes(range(256)) * (chunk_bytes // 256 + 1)
    with _connect(ip, port) as sock:

        def send() -> None:
            left = n_bytes
            while left > 0:
                k = min(left, chunk_bytes)
                sock.sendall(payload[:k])
                left -= k

        t0 = time.perf_counter()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = 0
        first_t = last_t = t0
        first_len = 0
        while got < n_bytes:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"echo closed after {got} of {n_bytes} bytes")
            now = time.perf_counter()
            if got == 0:
                first_t, first_len = now, len(data)
            got += len(data)
            last_t = now
        sender.join()
    steady = (got - first_len) * 8 / 1e6 / (last_t - first_t) if last_t > first_t else float("nan")
    return {"bytes": float(got), "duration_s": last_t - t0, "rate_mbit": steady,
            "goodput_mbit": got * 8 / 1e6 / (last_t - t0)}


def _qdisc_stats(devs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dev in devs:
        res = subprocess.run(["tc", "-s", "-j", "qdisc", "show", "dev", dev],
                             capture_output=True, text=True, check=False)
        out[dev] = json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else []
    return out


def guest_client(plan: dict[str, Any]) -> dict[str, Any]:
    """Client namespace: baseline, shape with tc netem, probe all links in parallel, rate."""
    result: dict[str, Any] = {"uptime_start_s": _uptime_s(), "steps": []}
    port = plan["port"]
    base = plan["baseline"]
    result["baseline_ms"] = guest_rtts(base["ip"], port, base["n"])
    for argv in plan["clear"]:
        _run(argv, check=False)
    for argv in plan["shape"]:
        result["steps"].append(_run(argv, plan["env"]))
    result["qdisc_before"] = _qdisc_stats(plan["stats_devs"])
    result["uptime_shaped_s"] = _uptime_s()
    samples: dict[str, list[float]] = {}
    errors: dict[str, str] = {}

    def probe(p: dict[str, Any]) -> None:
        try:
            samples[p["name"]] = guest_rtts(p["ip"], port, p["n"])
        except Exception as exc:  # recorded for the host, which reports it
            errors[p["name"]] = f"{type(exc).__name__}: {exc}"

    if plan.get("parallel"):
        threads = [threading.Thread(target=probe, args=(p,)) for p in plan["probes"]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for p in plan["probes"]:
            probe(p)
    result["samples_ms"] = samples
    result["probe_errors"] = errors
    result["uptime_probed_s"] = _uptime_s()
    tp = plan["throughput"]
    result["throughput"] = guest_throughput(tp["ip"], port, tp["bytes"])
    result["qdisc_after"] = _qdisc_stats(plan["stats_devs"])
    result["uptime_end_s"] = _uptime_s()
    return result


def guest_main(plan_path: Path, out_path: Path) -> int:
    """Root namespace of the guest: topology, echo server, client process; writes the result."""
    plan = json.loads(plan_path.read_text())
    report: dict[str, Any] = {"kernel": os.uname().release, "uptime_start_s": _uptime_s()}
    server: subprocess.Popen[str] | None = None
    try:
        report["tc_version"] = _run(["tc", "-V"], check=False)
        report["setup"] = [_run(argv) for argv in plan["setup"]]
        print("EDGEBED-PHASE-SETUP-DONE", flush=True)
        me = [plan["python"], "-m", "netem.kvmcheck"]
        server = subprocess.Popen(
            ["ip", "netns", "exec", SERVER_NS, *me, "serve", "--ips", *plan["server_ips"],
             "--port", str(plan["port"])],
            stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        ready = server.stdout.readline()
        if not ready:
            raise RuntimeError("echo server in the server namespace did not start")
        print("EDGEBED-PHASE-SERVER-READY", flush=True)
        client = subprocess.run(
            ["ip", "netns", "exec", CLIENT_NS, *me, "client", "--plan", str(plan_path)],
            capture_output=True, text=True, check=False)
        if client.returncode != 0:
            raise RuntimeError(f"client failed ({client.returncode}): {client.stderr.strip()}")
        report["client"] = json.loads(client.stdout)
        print("EDGEBED-PHASE-CLIENT-DONE", flush=True)
        report["ok"] = True
    except Exception as exc:
        report["ok"] = False
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if server is not None:
            server.kill()
            server.wait()
        report["uptime_end_s"] = _uptime_s()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report) + "\n")
    print(f"kvmcheck: ok={report['ok']} {report.get('error', '')}", flush=True)
    return 0 if report["ok"] else 1


# ---------------------------------------------------------------- host: run and judge


def run_checks(*, n: int = 500, n_loss: int = 1000, accel: str = "auto",
               icount_shift: int | None = None, parallel: bool = False,
               timeout_s: float = 900.0, io_dir: Path | None = None,
               echo: bool = False) -> dict[str, Any]:
    """Boot one guest, run every check in it, return the analysed result (JSON-ready).

    ``icount_shift`` (TCG only) runs the guest on qemu's instruction-counted virtual clock
    (2**shift ns per instruction, idle time skipped): the guest's time, netem's timers and the
    probes' clock are then independent of host load. Without it the guest follows the host's
    wall clock and every host stall shows up in the measured round trips.
    """
    import tempfile

    from netem import kvmguest

    io_dir = io_dir or Path(tempfile.mkdtemp(prefix="edgebed-kvmcheck-"))
    io_dir.mkdir(parents=True, exist_ok=True)
    plan = build_plan(n, n_loss=n_loss, lib_dir=io_dir / "tc-lib", parallel=parallel)
    plan_path = io_dir / "plan.json"
    guest_plan = f"{kvmguest.GUEST_IO_DIR}/plan.json"
    guest_out = f"{kvmguest.GUEST_OUT_DIR}/kvmcheck.json"
    # The tables are read in the guest through the I/O share.
    plan["env"] = {k: v.replace(str(io_dir), kvmguest.GUEST_IO_DIR)
                   for k, v in plan["env"].items()}
    plan_path.write_text(json.dumps(plan, indent=1) + "\n")
    started = time.monotonic()
    guest = kvmguest.run_in_guest(
        [plan["python"], "-m", "netem.kvmcheck", "guest", "--plan", guest_plan,
         "--out", guest_out],
        io_dir=io_dir, accel=accel, timeout_s=timeout_s, icount_shift=icount_shift, echo=echo)
    total_s = time.monotonic() - started
    raw_path = guest.out_dir / "kvmcheck.json"
    raw = json.loads(raw_path.read_text()) if raw_path.is_file() else None
    result: dict[str, Any] = {
        "accel": guest.accel,
        "clock": (f"icount shift={icount_shift} (virtual)" if icount_shift is not None
                  and guest.accel == "tcg" else "host wall clock"),
        "parallel_probes": parallel,
        "accel_reason": guest.accel_reason,
        "kernel": guest.kernel_version,
        "guest_returncode": guest.returncode,
        "timings_s": {"total": total_s, "qemu_wall": guest.wall_s, **guest.timings},
        "io_dir": str(io_dir),
    }
    if raw is None or not raw.get("ok"):
        result["ok"] = False
        result["error"] = (raw or {}).get("error") or (
            f"guest wrote no result (rc={guest.returncode}); console tail:\n"
            + "\n".join(guest.console.splitlines()[-30:]))
        return result
    result.update(analyse(plan, raw))
    return result


def _netem_counters(stats: dict[str, Any], handle: str) -> dict[str, int]:
    for dev_stats in stats.values():
        for q in dev_stats:
            if q.get("kind") == "netem" and q.get("handle") == handle:
                return {"packets": int(q.get("packets", 0)), "drops": int(q.get("drops", 0))}
    return {"packets": 0, "drops": 0}


def analyse(plan: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """Judge the guest's raw measurements against the configured links."""
    import numpy as np

    from netem.probe import fidelity_report
    from netem.spec import LinkSpec

    client = raw["client"]
    links = {name: LinkSpec.model_validate(cfg) for name, cfg in plan["links"].items()}
    baseline = float(np.median(client["baseline_ms"]))
    reports, raw_reports = [], []
    for name in DELAY_CHECKS:
        if name not in client["samples_ms"]:
            continue
        x = np.array(client["samples_ms"][name])
        reports.append(fidelity_report(x, links[name], name=name, baseline_ms=baseline))
        raw_reports.append(fidelity_report(x, links[name], name=name))
    # Loss: netem's own counters on the loss link's qdisc (class order = link order).
    names = list(plan["links"])
    loss_name = LOSS_CHECK[0]
    handle = f"{10 + names.index(loss_name)}:"
    before = _netem_counters(client["qdisc_before"], handle)
    after = _netem_counters(client["qdisc_after"], handle)
    sent = after["packets"] - before["packets"]
    dropped = after["drops"] - before["drops"]
    offered = sent + dropped
    p = links[loss_name].up.loss_ratio
    ratio = dropped / offered if offered else float("nan")
    se = (p * (1 - p) / offered) ** 0.5 if offered else float("nan")
    loss_samples = np.array(client["samples_ms"].get(loss_name, []))
    slow = int(np.sum(loss_samples > links[loss_name].rtt_mean_ms() + baseline + 100))
    loss = {
        "link": loss_name, "configured_loss_pct": 100 * p, "packets_offered": offered,
        "packets_dropped": dropped, "measured_loss_pct": 100 * ratio,
        "tolerance_pct": 100 * LOSS_Z * se,
        "ok": bool(offered > 0 and abs(ratio - p) <= LOSS_Z * se),
        "probes": len(loss_samples), "probes_slowed_by_retransmission": slow,
        "semantics": "real packet loss: TCP retransmits, a lost probe segment costs >= 200 ms RTO",
    }
    tp = client["throughput"]
    rate_cfg = links[RATE_CHECK[0]].up.rate_mbit or float("nan")
    ratio_rate = tp["rate_mbit"] / rate_cfg
    rate = {"link": RATE_CHECK[0], "configured_mbit": rate_cfg, **tp,
            "ratio": ratio_rate,
            "ok": bool(RATE_TOLERANCE[0] <= ratio_rate <= RATE_TOLERANCE[1])}
    ok = (all(r["mean_ok"] and r["ks_ok"] for r in reports) and len(reports) == len(DELAY_CHECKS)
          and loss["ok"] and rate["ok"] and not client["probe_errors"])
    return {
        "ok": ok,
        "kernel": raw["kernel"],
        "baseline_median_ms": baseline,
        "delay": reports,
        "delay_uncorrected": raw_reports,
        "loss": loss,
        "rate": rate,
        "probe_errors": client["probe_errors"],
        "tc_argvs": [s["argv"] for s in client["steps"]],
        "guest_uptime_s": {k: client[k] for k in ("uptime_start_s", "uptime_shaped_s",
                                                  "uptime_probed_s", "uptime_end_s")},
    }


def format_result(result: dict[str, Any]) -> str:
    """Human-readable tables of a :func:`run_checks` result."""
    from netem.probe import format_table

    lines = [f"guest: kernel {result.get('kernel')} accel {result.get('accel')} "
             f"({result.get('accel_reason')}); guest clock: {result.get('clock')}"]
    t = result.get("timings_s", {})
    lines.append("timings (host wall clock): " + ", ".join(
        f"{k} {v:.1f} s" for k, v in t.items() if isinstance(v, float) and "uptime" not in k))
    lines.append("guest clock: " + ", ".join(
        f"{k} {v:.1f} s" for k, v in t.items() if isinstance(v, float) and "uptime" in k))
    if not result.get("ok") and "delay" not in result:
        lines.append(f"FAILED: {result.get('error')}")
        return "\n".join(lines)
    lines.append(f"baseline (unshaped veth) median RTT {result['baseline_median_ms']:.3f} ms, "
                 "subtracted below")
    lines.append(format_table(result["delay"]))
    lines.append("without baseline subtraction:")
    lines.append(format_table(result["delay_uncorrected"]))
    r = result["rate"]
    lines.append(f"rate {r['link']}: configured {r['configured_mbit']:.3f} Mbit/s, measured "
                 f"{r['rate_mbit']:.3f} Mbit/s payload (ratio {r['ratio']:.3f}, allowed "
                 f"{RATE_TOLERANCE[0]}–{RATE_TOLERANCE[1]}) {'ok' if r['ok'] else 'NO'}")
    lo = result["loss"]
    lines.append(f"loss {lo['link']}: configured {lo['configured_loss_pct']:.2f} %, netem dropped "
                 f"{lo['packets_dropped']}/{lo['packets_offered']} = "
                 f"{lo['measured_loss_pct']:.2f} % (±{lo['tolerance_pct']:.2f}) "
                 f"{'ok' if lo['ok'] else 'NO'}; {lo['probes_slowed_by_retransmission']}"
                 f"/{lo['probes']} probes slowed by a retransmission")
    if result.get("probe_errors"):
        lines.append(f"probe errors: {result['probe_errors']}")
    lines.append(f"overall: {'PASS' if result['ok'] else 'FAIL'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netem.kvmcheck",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    g = sub.add_parser("guest", help="(in the guest) run a plan, write raw results")
    g.add_argument("--plan", required=True)
    g.add_argument("--out", required=True)
    s = sub.add_parser("serve", help="(in the guest) echo servers")
    s.add_argument("--ips", nargs="+", required=True)
    s.add_argument("--port", type=int, default=ECHO_PORT)
    c = sub.add_parser("client", help="(in the guest) client namespace part")
    c.add_argument("--plan", required=True)
    args = parser.parse_args(argv)
    if args.action == "guest":
        return guest_main(Path(args.plan), Path(args.out))
    if args.action == "serve":
        guest_serve(args.ips, args.port)
        return 0
    print(json.dumps(guest_client(json.loads(Path(args.plan).read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
