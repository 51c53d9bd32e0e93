"""tc backend: golden argv lists (no root needed), the integer-RTT netem table, the runner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from netem import tc
from netem.spec import DirectionSpec, LinkSpec, Topology


def test_netem_args_golden() -> None:
    assert tc.build_netem_args(DirectionSpec(delay_ms=10)) == ["delay", "10ms"]
    assert tc.build_netem_args(DirectionSpec(delay_ms=25, jitter_ms=7.5, distribution="normal",
                                             loss_pct=1, rate_mbit=1.5)) == [
        "delay", "25ms", "7500us", "distribution", "normal",
        "loss", "random", "1%", "rate", "1500kbit"]
    assert tc.build_netem_args(DirectionSpec(delay_ms=20, jitter_ms=5)) == [
        "delay", "20ms", "5ms"]  # netem's default jitter law is uniform
    assert tc.build_netem_args(DirectionSpec(delay_ms=20, jitter_ms=5, distribution="pareto")) \
        == ["delay", "20ms", "5ms", "distribution", "pareto"]


def test_root_and_clear_golden() -> None:
    assert tc.build_netem_root_argv("eth0", DirectionSpec(delay_ms=0.25)) == [
        "tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", "250us"]
    assert tc.build_clear_argvs("veth-a") == [
        ["tc", "qdisc", "del", "dev", "veth-a", "root"],
        ["tc", "qdisc", "del", "dev", "veth-a", "ingress"],
        ["ip", "link", "del", "ifb-veth-a"]]
    assert tc.ifb_name("enp0s31f6-long") == "ifb-enp0s31f6-l"  # IFNAMSIZ - 1 = 15


def test_single_link_apply_golden() -> None:
    link = LinkSpec.model_validate({"rtt_range_ms": [30, 120]})
    assert tc.build_apply_argvs(link, "eth0") == [
        ["tc", "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "htb"],
        ["tc", "class", "replace", "dev", "eth0", "parent", "1:", "classid", "1:10", "htb",
         "rate", "10gbit", "ceil", "10gbit"],
        ["tc", "qdisc", "replace", "dev", "eth0", "parent", "1:10", "handle", "10:", "netem",
         "delay", "30ms", "1024ms", "distribution", "edgebed-int-30-120"],
        ["tc", "filter", "replace", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1",
         "u32", "match", "u32", "0", "0", "flowid", "1:10"],
    ]  # down is zero: no ingress redirect


def test_per_destination_classes_and_ingress_golden() -> None:
    topo = Topology.model_validate({"links": {
        "device-edge": {"dst": "edge", "up": {"delay_ms": 5}, "down": {"delay_ms": 4}},
        "device-cloud": {"dst": "cloud", "delay_ms": 20, "rate_mbit": 10}}})
    argvs = tc.build_apply_argvs(topo, "eth0",
                                 peer_ips={"device-edge": "10.0.0.2", "device-cloud": "10.0.0.3"})
    text = [" ".join(a) for a in argvs]
    assert text == [
        "tc qdisc replace dev eth0 root handle 1: htb",
        "tc class replace dev eth0 parent 1: classid 1:10 htb rate 10gbit ceil 10gbit",
        "tc qdisc replace dev eth0 parent 1:10 handle 10: netem delay 5ms",
        "tc filter replace dev eth0 parent 1: protocol ip prio 1 u32 match ip dst 10.0.0.2/32 "
        "flowid 1:10",
        "tc class replace dev eth0 parent 1: classid 1:11 htb rate 10gbit ceil 10gbit",
        "tc qdisc replace dev eth0 parent 1:11 handle 11: netem delay 20ms rate 10mbit",
        "tc filter replace dev eth0 parent 1: protocol ip prio 2 u32 match ip dst 10.0.0.3/32 "
        "flowid 1:11",
        "ip link add ifb-eth0 type ifb",
        "ip link set ifb-eth0 up",
        "tc qdisc replace dev eth0 handle ffff: ingress",
        "tc filter replace dev eth0 parent ffff: protocol all prio 1 u32 match u32 0 0 action "
        "mirred egress redirect dev ifb-eth0",
        "tc qdisc replace dev ifb-eth0 root handle 1: htb",
        "tc class replace dev ifb-eth0 parent 1: classid 1:10 htb rate 10gbit ceil 10gbit",
        "tc qdisc replace dev ifb-eth0 parent 1:10 handle 10: netem delay 4ms",
        "tc filter replace dev ifb-eth0 parent 1: protocol ip prio 1 u32 match ip src 10.0.0.2/32 "
        "flowid 1:10",
        "tc class replace dev ifb-eth0 parent 1: classid 1:11 htb rate 10gbit ceil 10gbit",
        "tc qdisc replace dev ifb-eth0 parent 1:11 handle 11: netem delay 20ms rate 10mbit",
        "tc filter replace dev ifb-eth0 parent 1: protocol ip prio 2 u32 match ip src 10.0.0.3/32 "
        "flowid 1:11",
    ]
    with pytest.raises(ValueError, match="peer_ips"):
        tc.build_apply_argvs(topo, "eth0")
    with pytest.raises(ValueError, match=r"lacks links \['device-cloud'\]"):
        tc.build_apply_argvs(topo, "eth0", peer_ips={"device-edge": "10.0.0.2"})


def test_kernel_shaping_builders_golden() -> None:
    assert tc.build_tbf_argv("veth0", 8) == [
        "tc", "qdisc", "replace", "dev", "veth0", "root", "tbf", "rate", "8mbit",
        "burst", "32000", "latency", "50ms"]
    assert tc.build_htb_rate_argvs("veth0", 2.5)[1] == [
        "tc", "class", "replace", "dev", "veth0", "parent", "1:", "classid", "1:10", "htb",
        "rate", "2500kbit", "ceil", "2500kbit", "burst", "32000", "cburst", "32000"]
    assert tc.build_iptables_loss_argv(8001, 5) == [
        "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8001", "-m", "statistic", "--mode",
        "random", "--probability", "0.050000", "-j", "DROP"]
    assert tc.in_netns(["tc", "qdisc", "show"], "ns1") == [
        "ip", "netns", "exec", "ns1", "tc", "qdisc", "show"]


@pytest.mark.parametrize(("lo", "hi"), [(30, 120), (5, 15), (0, 0), (0, 4095)])
def test_integer_table_gives_exact_integer_ms_in_the_kernels_arithmetic(lo: int, hi: int) -> None:
    table = tc.integer_uniform_table(lo, hi)
    assert len(table) == hi - lo + 1 and max(table) <= 32767
    sigma_ns = tc.INT_TABLE_JITTER_MS * 1_000_000
    assert sigma_ns < 2**31  # the kernel passes sigma as s32
    delays_ns = [tc.kernel_tabledist_ns(lo * 1_000_000, sigma_ns, t) for t in table]
    assert delays_ns == [k * 1_000_000 for k in range(lo, hi + 1)]


def test_integer_table_range_limit() -> None:
    with pytest.raises(ValueError, match=r"width must be within 0\.\.4095 ms, got 4096"):
        tc.integer_uniform_table(0, 4096)


def test_apply_runs_clear_then_builders_with_tables(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """apply() with a recording runner: order, netns prefix, generated table and TC_LIB_DIR."""
    cleared: list[tuple[str, str | None]] = []
    monkeypatch.setattr(tc, "clear", lambda dev, netns=None: cleared.append((dev, netns)))
    ran: list[tuple[list[str], dict | None]] = []
    link = LinkSpec.model_validate({"rtt_range_ms": [5, 15]})
    out = tc.apply(link, "veth-a", netns="ns1", lib_dir=tmp_path,
                   runner=lambda argv, env: ran.append((argv, env)))
    assert cleared == [("veth-a", "ns1")]
    assert [a for a, _ in ran] == [tc.in_netns(a, "ns1") for a in out]
    assert all(env == {"TC_LIB_DIR": str(tmp_path)} for _, env in ran)
    table = (tmp_path / "edgebed-int-5-15.dist").read_text().split()
    assert [int(v) for v in table if v.lstrip("-").isdigit()] == [8 * k for k in range(11)]


def test_tc_runner_reports_stderr() -> None:
    if shutil.which("tc") is None:
        pytest.skip("tc (iproute2) is not installed")
    with pytest.raises(RuntimeError, match="failed"):
        tc.run_argv(["tc", "qdisc", "add", "dev", "edgebed-no-such-dev", "root", "htb"])
