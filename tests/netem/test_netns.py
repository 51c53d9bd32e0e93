"""Kernel rate shaping between two network namespaces joined by a veth pair (needs root).

A TCP echo server runs in namespace B, the throughput client in namespace A; the shaping qdisc
sits on A's veth egress (tbf or htb, built by ``netem.tc``), so the echoed stream's rate is the
shaped A->B rate. Namespaces are always deleted, processes always stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import REPO

from netem import tc

pytestmark = pytest.mark.root
RATE_MBIT = 8.0
PAYLOAD_PER_FRAME = 1448 / 1514


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def veth_pair() -> Iterator[dict[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces, a veth pair and tc qdiscs")
    tag = f"{os.getpid() % 100000}"
    ns_a, ns_b = f"eb-a-{tag}", f"eb-b-{tag}"
    va, vb = f"eba{tag}", f"ebb{tag}"
    made: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            _run(["ip", "netns", "add", ns])
            made.append(ns)
        _run(["ip", "link", "add", va, "netns", ns_a, "type", "veth", "peer", "name", vb,
              "netns", ns_b])
        for ns, dev, ip in ((ns_a, va, "10.231.0.1/24"), (ns_b, vb, "10.231.0.2/24")):
            _run(["ip", "-n", ns, "addr", "add", ip, "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        yield {"ns_a": ns_a, "ns_b": ns_b, "dev_a": va, "ip_b": "10.231.0.2"}
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot build namespaces here: {exc.stderr}")
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _measure(env: dict[str, str]) -> dict[str, float]:
    py = [sys.executable, "-m", "netem.probe"]
    penv = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(["ip", "netns", "exec", env["ns_b"], *py, "serve", "--bind",
                               f"{env['ip_b']}:7007"], stdout=subprocess.PIPE, text=True,
                              env=penv, cwd=REPO)
    try:
        assert server.stdout is not None and json.loads(server.stdout.readline())["ready"]
        out = subprocess.run(["ip", "netns", "exec", env["ns_a"], *py, "throughput", "--target",
                              f"{env['ip_b']}:7007", "--bytes", str(int(RATE_MBIT * 1e6 / 8 * 2))],
                             capture_output=True, text=True, timeout=120, env=penv, cwd=REPO)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout:
            server.stdout.close()


@pytest.mark.parametrize("qdisc", ["tbf", "htb"])
def test_kernel_rate_shaping_between_namespaces(veth_pair: dict[str, str], qdisc: str) -> None:
    env = veth_pair
    argvs = ([tc.build_tbf_argv(env["dev_a"], RATE_MBIT)] if qdisc == "tbf"
             else tc.build_htb_rate_argvs(env["dev_a"], RATE_MBIT))
    for argv in argvs:
        tc.run_argv(tc.in_netns(argv, env["ns_a"]))
    # the qdisc meters whole Ethernet frames: 1448 B of payload per 1514 B frame (TCP timestamps)
    payload_mbit = RATE_MBIT * PAYLOAD_PER_FRAME
    for attempt in (1, 2):
        # a sender or echo process descheduled for longer than the bucket's 32 ms of tokens
        # leaves the qdisc idle (measured once: 6.77 Mbit/s with the host at load 3); a rate
        # the qdisc really gets wrong misses again, a host stall does not come back on cue
        res = _measure(env)
        print(f"{qdisc} attempt {attempt}: configured {RATE_MBIT} Mbit/s on the wire = "
              f"{payload_mbit:.3f} Mbit/s of TCP payload; measured {res['rate_mbit']:.3f} "
              f"Mbit/s (load average {os.getloadavg()[0]:.2f})")
        if 0.95 * payload_mbit <= res["rate_mbit"] <= 1.05 * payload_mbit:
            break
    assert 0.95 * payload_mbit <= res["rate_mbit"] <= 1.05 * payload_mbit, res
    # unshaped: clearly faster, so the qdisc (not the hosts) set the rate above
    tc.clear(env["dev_a"], netns=env["ns_a"])
    free = _measure(env)
    assert free["rate_mbit"] > 2 * RATE_MBIT, free
