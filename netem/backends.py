"""Link backend selection: detect what the kernel and the process may do, pick ``tc`` or ``proxy``.

``select_backend("auto")`` returns a JSON-ready dict (the orchestrator stores it in run.json)::

    {"backend": "proxy", "requested": "auto",
     "reason": "kernel has no sch_netem (tc qdisc add ... netem failed: ...); using the userspace proxy",
     "kernel_rate_shaping": "tbf", "kernel_loss": "iptables statistic", "capabilities": {...}}

``auto`` picks ``tc`` when we are root, ``tc``/``ip`` exist and a netem qdisc can really be
created (tried on ``lo`` of a throwaway network namespace, which also loads the module), else
``proxy``. When root without netem, the capabilities also say whether kernel rate shaping
(tbf/htb) and iptables ``statistic`` random loss are available to complement the proxy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

BACKEND_NAMES = ("auto", "tc", "proxy")


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return res.returncode, (res.stderr or res.stdout).strip()


def _module_state(name: str) -> str:
    if Path(f"/sys/module/{name}").exists():
        return "loaded"
    rc, _ = _run(["modprobe", "-n", name]) if shutil.which("modprobe") else (1, "")
    return "available as module" if rc == 0 else "not found"


def _probe_in_netns(ns: str) -> dict[str, Any]:
    """Try each qdisc/match in a throwaway netns; return {feature: (ok, detail)}."""
    trials: dict[str, list[list[str]]] = {
        "netem": [["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]],
        "tbf": [["tc", "qdisc", "replace", "dev", "lo", "root", "tbf", "rate", "1mbit",
                 "burst", "32kbit", "latency", "50ms"]],
        "htb": [["tc", "qdisc", "replace", "dev", "lo", "root", "handle", "1:", "htb"]],
        "ifb": [["ip", "link", "add", "ifb-probe", "type", "ifb"]],
        "iptables_statistic": [["iptables", "-A", "INPUT", "-m", "statistic", "--mode",
                                "random", "--probability", "0.5", "-j", "ACCEPT"]],
    }
    out: dict[str, Any] = {}
    for feature, argvs in trials.items():
        ok, detail = True, "ok"
        for argv in argvs:
            rc, msg = _run(["ip", "netns", "exec", ns, *argv])
            if rc != 0:
                ok, detail = False, f"{' '.join(argv)}: {msg or rc}"
                break
        out[feature] = {"ok": ok, "detail": detail}
        _run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "lo", "root"])
    return out


def detect_capabilities() -> dict[str, Any]:
    """What this host offers for link emulation (never leaves anything behind)."""
    caps: dict[str, Any] = {
        "is_root": os.geteuid() == 0,
        "tc": shutil.which("tc") is not None,
        "ip": shutil.which("ip") is not None,
        "iptables": shutil.which("iptables") is not None,
        "sch_netem_module": _module_state("sch_netem"),
        "kernel": os.uname().release,
    }
    if caps["is_root"] and caps["tc"] and caps["ip"]:
        ns = f"edgebed-probe-{os.getpid()}"
        rc, msg = _run(["ip", "netns", "add", ns])
        if rc == 0:
            try:
                _run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
                caps["netns"] = True
                caps["features"] = _probe_in_netns(ns)
            finally:
                _run(["ip", "netns", "del", ns])
        else:
            caps["netns"] = False
            caps["netns_error"] = msg
    return caps


def select_backend(requested: str = "auto", caps: dict[str, Any] | None = None) -> dict[str, Any]:
    """Choose the link backend and say why (see module docstring for the dict)."""
    if requested not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}, got {requested!r}")
    caps = detect_capabilities() if caps is None else caps
    feats = caps.get("features", {})
    netem_ok = bool(feats.get("netem", {}).get("ok"))
    if not caps.get("is_root"):
        why_not_tc = "not root (tc needs CAP_NET_ADMIN)"
    elif not (caps.get("tc") and caps.get("ip")):
        why_not_tc = "tc/ip not installed"
    elif not caps.get("netns", False):
        why_not_tc = f"cannot create a network namespace to test netem: {caps.get('netns_error')}"
    elif not netem_ok:
        why_not_tc = f"kernel has no sch_netem ({feats.get('netem', {}).get('detail', '?')})"
    else:
        why_not_tc = ""
    rate = next((q for q in ("tbf", "htb") if feats.get(q, {}).get("ok")), None)
    loss = "iptables statistic" if feats.get("iptables_statistic", {}).get("ok") else None
    choice: dict[str, Any] = {"requested": requested, "capabilities": caps,
                              "kernel_rate_shaping": rate, "kernel_loss": loss}
    if requested == "proxy":
        choice.update(backend="proxy", reason="requested explicitly")
    elif requested == "tc":
        if why_not_tc:
            raise RuntimeError(f"backend tc requested but unusable: {why_not_tc}")
        choice.update(backend="tc", reason="requested explicitly; netem qdisc verified")
    elif why_not_tc:
        choice.update(backend="proxy", reason=f"{why_not_tc}; using the userspace proxy")
    else:
        choice.update(backend="tc", reason="root and the kernel accepted a netem qdisc")
    return choice


def describe_choice(choice: dict[str, Any]) -> str:
    """One line for logs: ``link backend: proxy (reason...)``."""
    extra = []
    if choice.get("backend") == "proxy" and choice.get("kernel_rate_shaping"):
        extra.append(f"kernel rate shaping available: {choice['kernel_rate_shaping']}")
    if choice.get("backend") == "proxy" and choice.get("kernel_loss"):
        extra.append(f"kernel loss available: {choice['kernel_loss']}")
    tail = f"; {'; '.join(extra)}" if extra else ""
    return f"link backend: {choice['backend']} ({choice['reason']}{tail})"


# Registry of link backends by config name: what each needs to run, for docs and `link backend`.
BACKENDS: dict[str, Callable[..., Any]] = {}


def register_backend(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        BACKENDS[name] = fn
        return fn
    return deco


@register_backend("tc")
def start_tc(topology: Any, **kwargs: Any) -> Any:
    """Shape a device with netem: ``netem.tc.apply(topology, dev=..., peer_ips=...)``."""
    from netem import tc

    return tc.apply(topology, **kwargs)


@register_backend("proxy")
async def start_proxy(topology: Any, **kwargs: Any) -> Any:
    """Start one userspace proxy per link: ``await netem.proxy.serve_links(topology)``."""
    from netem.proxy import serve_links

    return await serve_links(topology, **kwargs)
