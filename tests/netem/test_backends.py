"""Backend selection: the decision table (pure) and the real detection on this host."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from netem.backends import BACKENDS, describe_choice, select_backend


def _caps(root: bool = True, netem: bool = True, netns: bool = True) -> dict:
    feats = {"netem": {"ok": netem, "detail": "ok" if netem else "Error: Specified qdisc kind is "
                                                                  "unknown."},
             "tbf": {"ok": True}, "htb": {"ok": True}, "iptables_statistic": {"ok": True}}
    return {"is_root": root, "tc": True, "ip": True, "netns": netns, "features": feats}


def test_auto_picks_tc_when_root_and_netem_works() -> None:
    c = select_backend("auto", _caps())
    assert c["backend"] == "tc" and "netem qdisc" in c["reason"]


@pytest.mark.parametrize(("caps", "why"), [
    (_caps(root=False), "not root"),
    (_caps(netem=False), "kernel has no sch_netem (Error: Specified qdisc kind is unknown.)"),
    (_caps(netns=False), "cannot create a network namespace"),
])
def test_auto_falls_back_to_proxy_with_reason(caps: dict, why: str) -> None:
    c = select_backend("auto", caps)
    assert c["backend"] == "proxy"
    assert why in c["reason"] and "userspace proxy" in c["reason"]
    if caps["is_root"] and caps["netns"]:
        assert c["kernel_rate_shaping"] == "tbf" and c["kernel_loss"] == "iptables statistic"
        assert "kernel rate shaping available: tbf" in describe_choice(c)


def test_explicit_choices_and_bad_name() -> None:
    assert select_backend("proxy", _caps())["backend"] == "proxy"
    with pytest.raises(RuntimeError, match="tc requested but unusable: kernel has no sch_netem"):
        select_backend("tc", _caps(netem=False))
    with pytest.raises(ValueError, match="backend must be one of auto, tc, proxy, got 'ns3'"):
        select_backend("ns3", _caps())
    assert set(BACKENDS) == {"tc", "proxy"}


def test_detection_on_this_host_agrees_with_sys_module() -> None:
    """Real detection (creates and deletes a throwaway netns when root)."""
    choice = select_backend("auto")
    caps = choice["capabilities"]
    assert caps["is_root"] == (os.geteuid() == 0)
    if not caps["is_root"]:
        assert choice["backend"] == "proxy" and "not root" in choice["reason"]
        return
    netem_works = caps["features"]["netem"]["ok"]
    assert choice["backend"] == ("tc" if netem_works else "proxy")
    if not netem_works:
        assert "sch_netem" in choice["reason"]
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "edgebed-probe" not in ns  # the throwaway namespace is gone


def test_cli_backend_prints_choice() -> None:
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "link", "backend"],
                         capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("link backend: ")
