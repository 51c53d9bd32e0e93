"""tc backend: pure builders of ``tc``/``ip``/``iptables`` argv lists, plus a runner that applies them.

Usable standalone (e.g. inside a VM whose kernel has ``sch_netem``)::

    from netem import tc
    from netem.spec import LinkSpec
    link = LinkSpec.model_validate({"rtt_range_ms": [30, 120]})
    tc.apply(link, dev="eth0")            # up on egress of eth0, down on ingress via ifb
    tc.apply(topology, dev="eth0", peer_ips={"device-edge": "10.0.0.2", ...})  # per destination
    tc.clear("eth0")

Layout built by :func:`build_apply_argvs`:

* egress (``up``): ``htb`` root on ``dev``; one class per link (``1:<10+i>``) selected by a u32
  filter on the peer's address (``match ip dst``), with a ``netem`` child carrying that link's
  ``up`` direction. A single link without ``peer_ips`` matches all traffic (``u32 match u32 0 0``).
* ingress (``down``): an ``ingress`` qdisc on ``dev`` redirects to an ``ifb`` device
  (``ifb-<dev>``, at most 15 characters), which carries the same tree for the ``down`` directions
  (matching ``ip src`` = peer).
* ``integer_ms`` uniform delays (the simulator's integer RTT range) use a generated netem
  distribution table (:func:`integer_uniform_table`) that makes netem draw exact integers:
  ``delay LO jitter 1024ms distribution edgebed-int-LO-HI`` with table entries 8·k for
  k = 0..HI-LO, read from ``TC_LIB_DIR`` (see :func:`write_dist_table`).

netem reorders packets when jitter exceeds the packet spacing (its tfifo sorts by send time); the
proxy backend never reorders. Loss here is real packet loss (TCP retransmits), not the proxy's
RTO-penalty model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from netem.spec import DirectionSpec, LinkSpec, Topology

Argv = list[str]
NETEM_DIST_SCALE = 8192
INT_TABLE_JITTER_MS = 1024  # 1.024e9 ns: divisible by 8192, so each table unit is exactly 1/8 ms
INT_TABLE_UNITS_PER_MS = 8
MAX_INT_RANGE_MS = 32767 // INT_TABLE_UNITS_PER_MS  # table entries are s16
STANDARD_TC_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu/tc", "/usr/lib/aarch64-linux-gnu/tc",
                        "/usr/lib/tc", "/usr/lib64/tc")


def fmt_time(ms: float) -> str:
    """``10`` -> ``10ms``; ``0.25`` -> ``250us`` (tc parses both)."""
    if float(ms).is_integer():
        return f"{int(ms)}ms"
    return f"{round(ms * 1000)}us"


def fmt_rate(mbit: float) -> str:
    if float(mbit).is_integer():
        return f"{int(mbit)}mbit"
    return f"{round(mbit * 1000)}kbit"


def fmt_pct(pct: float) -> str:
    return f"{pct:g}%"


def dist_table_name(d: DirectionSpec) -> str:
    lo, hi = round(d.delay_ms - d.jitter_ms), round(d.delay_ms + d.jitter_ms)
    return f"edgebed-int-{lo}-{hi}"


def integer_uniform_table(lo_ms: int, hi_ms: int) -> list[int]:
    """netem table making ``delay lo jitter 1024ms`` draw integers lo..hi ms uniformly.

    The kernel returns ``mu + t * sigma / 8192`` (``tabledist``); with sigma = 1.024e9 ns each
    table unit is 125000 ns, so entry ``8 * k`` adds exactly ``k`` ms.
    """
    if not 0 <= hi_ms - lo_ms <= MAX_INT_RANGE_MS:
        raise ValueError(f"integer RTT range width must be within 0..{MAX_INT_RANGE_MS} ms, "
                         f"got {hi_ms - lo_ms}")
    return [INT_TABLE_UNITS_PER_MS * k for k in range(hi_ms - lo_ms + 1)]


def kernel_tabledist_ns(mu_ns: int, sigma_ns: int, t: int) -> int:
    """The kernel's ``tabledist`` arithmetic for one table value (for tests of the tables)."""
    x = (sigma_ns % NETEM_DIST_SCALE) * t
    x += NETEM_DIST_SCALE // 2 if x >= 0 else -(NETEM_DIST_SCALE // 2)
    return int(x / NETEM_DIST_SCALE) + (sigma_ns // NETEM_DIST_SCALE) * t + mu_ns


def write_dist_table(d: DirectionSpec, lib_dir: str | Path) -> Path:
    """Write the ``.dist`` file :func:`build_netem_args` refers to for an ``integer_ms`` spec."""
    lo, hi = round(d.delay_ms - d.jitter_ms), round(d.delay_ms + d.jitter_ms)
    values = integer_uniform_table(lo, hi)
    path = Path(lib_dir) / f"{dist_table_name(d)}.dist"
    lines = [" ".join(str(v) for v in values[i:i + 8]) for i in range(0, len(values), 8)]
    path.write_text("# edgebed integer-uniform delay table\n" + "\n".join(lines) + "\n")
    return path


def build_netem_args(d: DirectionSpec) -> Argv:
    """netem options for one direction: ``delay``/jitter/distribution, ``loss``, ``rate``."""
    args: Argv = []
    if d.integer_ms and d.jitter_ms:
        lo = round(d.delay_ms - d.jitter_ms)
        args += ["delay", fmt_time(lo), fmt_time(INT_TABLE_JITTER_MS),
                 "distribution", dist_table_name(d)]
    elif d.jitter_ms:
        args += ["delay", fmt_time(d.delay_ms), fmt_time(d.jitter_ms)]
        if d.distribution != "uniform":
            args += ["distribution", d.distribution]
    else:
        args += ["delay", fmt_time(d.delay_ms)]
    if d.loss_pct:
        args += ["loss", "random", fmt_pct(d.loss_pct)]
    if d.rate_mbit:
        args += ["rate", fmt_rate(d.rate_mbit)]
    return args


def build_netem_root_argv(dev: str, d: DirectionSpec) -> Argv:
    """Single netem root qdisc on ``dev`` (``replace``: idempotent)."""
    return ["tc", "qdisc", "replace", "dev", dev, "root", "netem", *build_netem_args(d)]


def ifb_name(dev: str) -> str:
    return f"ifb-{dev}"[:15]


def build_clear_argvs(dev: str) -> list[Argv]:
    """Delete root + ingress qdiscs on ``dev`` and its ifb device (errors are ignored by clear)."""
    return [
        ["tc", "qdisc", "del", "dev", dev, "root"],
        ["tc", "qdisc", "del", "dev", dev, "ingress"],
        ["ip", "link", "del", ifb_name(dev)],
    ]


def _tree_argvs(dev: str, entries: Sequence[tuple[str | None, DirectionSpec]],
                match: str) -> list[Argv]:
    """htb root + per-peer class, netem child and u32 filter; ``match`` is ``dst`` or ``src``."""
    argvs: list[Argv] = [["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb"]]
    for i, (ip, d) in enumerate(entries):
        minor = 10 + i
        # htb only classifies (rate is netem's own ``rate`` option, serialising per packet)
        argvs.append(["tc", "class", "replace", "dev", dev, "parent", "1:", "classid",
                      f"1:{minor}", "htb", "rate", "10gbit", "ceil", "10gbit"])
        argvs.append(["tc", "qdisc", "replace", "dev", dev, "parent", f"1:{minor}", "handle",
                      f"{minor}:", "netem", *build_netem_args(d)])
        sel = ["match", "ip", match, ip if "/" in ip else f"{ip}/32"] if ip else \
            ["match", "u32", "0", "0"]
        argvs.append(["tc", "filter", "replace", "dev", dev, "parent", "1:", "protocol", "ip",
                      "prio", str(1 + i), "u32", *sel, "flowid", f"1:{minor}"])
    return argvs


def build_ingress_redirect_argvs(dev: str) -> list[Argv]:
    """Create ``ifb-<dev>`` and redirect all of ``dev``'s ingress to it."""
    ifb = ifb_name(dev)
    return [
        ["ip", "link", "add", ifb, "type", "ifb"],
        ["ip", "link", "set", ifb, "up"],
        ["tc", "qdisc", "replace", "dev", dev, "handle", "ffff:", "ingress"],
        ["tc", "filter", "replace", "dev", dev, "parent", "ffff:", "protocol", "all", "prio",
         "1", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
         "dev", ifb],
    ]


def _links_of(obj: LinkSpec | Topology | Mapping[str, LinkSpec]) -> dict[str, LinkSpec]:
    if isinstance(obj, LinkSpec):
        return {"link": obj}
    if isinstance(obj, Topology):
        return dict(obj.links)
    return dict(obj)


def build_apply_argvs(links: LinkSpec | Topology | Mapping[str, LinkSpec], dev: str, *,
                      peer_ips: Mapping[str, str] | None = None,
                      ingress: bool = True) -> list[Argv]:
    """All argv lists to shape ``dev`` for ``links`` (after :func:`build_clear_argvs`).

    ``peer_ips`` maps link name -> peer address (destination of ``up`` traffic); required when
    more than one link is given. ``ingress=False`` shapes only ``up`` (egress).
    """
    named = _links_of(links)
    if len(named) > 1 and not peer_ips:
        raise ValueError("peer_ips (link name -> peer address) is required for several links")
    missing = [n for n in named if peer_ips is not None and n not in peer_ips]
    if peer_ips is not None and missing:
        raise ValueError(f"peer_ips lacks links {missing}")
    ups = [((peer_ips or {}).get(n), link.up) for n, link in named.items()]
    argvs = _tree_argvs(dev, ups, "dst")
    downs = [((peer_ips or {}).get(n), link.down) for n, link in named.items()]
    if ingress and any(not d.is_zero or d.rate_mbit for _, d in downs):
        argvs += build_ingress_redirect_argvs(dev)
        argvs += _tree_argvs(ifb_name(dev), downs, "src")
    return argvs


def build_tbf_argv(dev: str, rate_mbit: float, *, burst_bytes: int = 32_000,
                   latency_ms: float = 50) -> Argv:
    """Kernel rate shaping without netem (token bucket): ``tc qdisc replace ... tbf``."""
    return ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", fmt_rate(rate_mbit),
            "burst", str(burst_bytes), "latency", fmt_time(latency_ms)]


def build_htb_rate_argvs(dev: str, rate_mbit: float, *,
                        burst_bytes: int = 32_000) -> list[Argv]:
    """Kernel rate shaping with htb: one default class at ``rate_mbit``.

    Unlike tbf, htb does not split GSO super-packets: it charges a 64 KB packet at once and the
    sender's TCP small-queue limit then leaves the class idle between packets, so the link ran
    5-8 % slow on a veth pair (7.03-7.30 Mbit/s of payload for 7.65; 7.71 with segmentation).
    The last argv therefore caps the device's GSO packets at one segment
    (``ip link set ... gso_max_segs 1``; ``tc.clear`` does not undo it). The burst is explicit,
    as for tbf, so a dequeue that wakes late on a busy host keeps its tokens.
    """
    rate = fmt_rate(rate_mbit)
    return [
        ["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10"],
        ["tc", "class", "replace", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
         "rate", rate, "ceil", rate, "burst", str(burst_bytes), "cburst", str(burst_bytes)],
        ["ip", "link", "set", "dev", dev, "gso_max_segs", "1"],
    ]


def build_iptables_loss_argv(port: int, loss_pct: float, *, chain: str = "INPUT",
                             action: str = "-A", direction: str = "--dport") -> Argv:
    """Random real packet loss on a TCP port with iptables' ``statistic`` match."""
    return ["iptables", action, chain, "-p", "tcp", direction, str(port), "-m", "statistic",
            "--mode", "random", "--probability", f"{loss_pct / 100:.6f}", "-j", "DROP"]


def in_netns(argv: Argv, netns: str | None) -> Argv:
    """Prefix ``ip netns exec NS`` when ``netns`` is given."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


Runner = Callable[[Argv, Mapping[str, str] | None], None]


def run_argv(argv: Argv, env: Mapping[str, str] | None = None) -> None:
    """Run one argv (no shell); raise ``RuntimeError`` with tc's stderr on failure."""
    full_env = {**os.environ, **env} if env else None
    res = subprocess.run(argv, capture_output=True, text=True, env=full_env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")


def clear(dev: str, *, netns: str | None = None) -> None:
    """Remove everything :func:`apply` installed on ``dev`` (missing pieces are fine)."""
    for argv in build_clear_argvs(dev):
        subprocess.run(in_netns(argv, netns), capture_output=True, check=False)


def apply(links: LinkSpec | Topology | Mapping[str, LinkSpec], dev: str, *,
          peer_ips: Mapping[str, str] | None = None, ingress: bool = True,
          netns: str | None = None, lib_dir: str | Path | None = None,
          runner: Runner = run_argv) -> list[Argv]:
    """Clear ``dev`` then install netem for ``links``; returns the argv lists that were run.

    Idempotent (clear first, ``replace`` verbs). ``lib_dir`` receives generated distribution
    tables (default: a fresh temporary folder), passed to tc as ``TC_LIB_DIR``.
    """
    clear(dev, netns=netns)
    argvs = build_apply_argvs(links, dev, peer_ips=peer_ips, ingress=ingress)
    named = _links_of(links)
    int_specs = [d for link in named.values() for d in (link.up, link.down)
                 if d.integer_ms and d.jitter_ms]
    env = None
    if int_specs:
        lib = Path(lib_dir or tempfile.mkdtemp(prefix="edgebed-tc-"))
        for std in STANDARD_TC_LIB_DIRS:  # keep normal/pareto reachable under TC_LIB_DIR
            for table in Path(std).glob("*.dist") if Path(std).is_dir() else ():
                if not (lib / table.name).exists():
                    shutil.copy(table, lib / table.name)
        for d in int_specs:
            write_dist_table(d, lib)
        env = {"TC_LIB_DIR": str(lib)}
    for argv in argvs:
        runner(in_netns(argv, netns), env)
    return argvs
