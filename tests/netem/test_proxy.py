"""Link proxy, live on loopback: integrity, ordering, per-direction delay, loss, rate, control API,
metrics, runtime changes, the subprocess and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import REPO, proxy_process
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from netem.probe import measure_rtts, measure_throughput, start_echo_server
from netem.proxy import serve_links


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_links(links: dict[str, dict[str, Any]], body: Any, **kw: Any) -> Any:
    echo = await start_echo_server()
    target = f"127.0.0.1:{echo.sockets[0].getsockname()[1]}"
    proxies = await serve_links({n: {**s, "target": target} for n, s in links.items()},
                                registry=CollectorRegistry(), **kw)
    try:
        return await body(proxies, target)
    finally:
        await proxies.close()
        echo.close()
        await echo.wait_closed()


def _addr(proxies: Any, name: str) -> str:
    host, port = proxies.address(name)
    return f"{host}:{port}"


def _sample(proxies: Any, metric: str, **labels: str) -> float:
    v = proxies.metrics.registry.get_sample_value(metric, labels)
    return 0.0 if v is None else v


def _parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_bytes_intact_and_never_reordered_under_jitter() -> None:
    """200 separate chunks through a link with 0–50 ms jitter come back byte-identical."""
    async def body(proxies: Any, _: str) -> None:
        reader, writer = await asyncio.open_connection(*proxies.address("jittery"))
        rng = np.random.default_rng(0)
        sent = b""
        for i in range(200):
            chunk = f"<{i}>".encode() + rng.bytes(int(rng.integers(1, 3000)))
            sent += chunk
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.001)  # separate reads at the proxy: separate delay draws
        got = await asyncio.wait_for(reader.readexactly(len(sent)), 30)
        writer.close()
        assert got == sent
        chunks = _sample(proxies, "edgebed_link_chunks_total", link="jittery", direction="up")
        assert chunks >= 50, chunks  # really delayed chunk by chunk
        assert _sample(proxies, "edgebed_link_bytes_total", link="jittery",
                       direction="up") == len(sent)
        assert _sample(proxies, "edgebed_link_bytes_total", link="jittery",
                       direction="down") == len(sent)

    run(_with_links({"jittery": {"up": {"delay_ms": 25, "jitter_ms": 25}}}, body))


@pytest.mark.parametrize("stamps", [True, False])
def test_delay_runs_from_kernel_arrival_not_from_a_late_read(stamps: bool) -> None:
    """The proxy's loop is blocked for 30 ms while a request arrives: with kernel receive
    timestamps the 50 ms delay still runs from the arrival (RTT ~50 ms); anchored at the read
    (``stamps=False``) the block is added (~80 ms). Also: the drawn-delay counter sums the draws."""
    import socket

    async def body(proxies: Any, _: str) -> None:
        loop = asyncio.get_running_loop()
        host, port = proxies.address("l50")
        rtts: list[float] = []

        def client() -> None:
            with socket.create_connection((host, port)) as c:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.settimeout(5)
                for _ in range(5):
                    loop.call_soon_threadsafe(time.sleep, 0.03)  # the proxy's loop stalls ...
                    time.sleep(0.005)  # ... and is stalled when the request arrives
                    t0 = time.perf_counter()
                    c.sendall(b"ping")
                    assert c.recv(16) == b"ping"
                    rtts.append((time.perf_counter() - t0) * 1e3)
                    time.sleep(0.05)

        await asyncio.to_thread(client)
        x = np.median(rtts)
        if stamps:
            assert 49.0 <= x <= 60.0, rtts
        else:
            assert x >= 70.0, rtts
        drawn = _sample(proxies, "edgebed_link_drawn_delay_seconds_total", link="l50",
                        direction="up")
        chunks = _sample(proxies, "edgebed_link_chunks_total", link="l50", direction="up")
        assert chunks == 5 and drawn == pytest.approx(5 * 0.05), (drawn, chunks)

    run(_with_links({"l50": {"up": {"delay_ms": 50}}}, body, stamps=stamps))


def test_delay_is_per_direction() -> None:
    async def body(proxies: Any, target: str) -> None:
        direct = np.median(await measure_rtts(target, 20))
        up = await measure_rtts(_addr(proxies, "up20"), 20)
        down = await measure_rtts(_addr(proxies, "down7"), 20)
        for name, x, want in (("up20", up, 20), ("down7", down, 7)):
            # at most the timer lead (<= 0.3 ms) early; best case near the configured delay
            assert want - 0.3 <= x.min() - direct <= want + 3, (name, want, direct, x)
        # histogram of applied delays, per direction
        s = _sample(proxies, "edgebed_link_delay_seconds_sum", link="up20", direction="up")
        n = _sample(proxies, "edgebed_link_delay_seconds_count", link="up20", direction="up")
        assert n >= 20 and 0.0195 <= s / n <= 0.03, (s, n)
        assert _sample(proxies, "edgebed_link_delay_seconds_sum", link="up20",
                       direction="down") == 0

    run(_with_links({"up20": {"up": {"delay_ms": 20}}, "down7": {"down": {"delay_ms": 7}}},
                    body))


def test_loss_costs_an_rto_per_lost_chunk() -> None:
    """Documented loss model: each chunk pays loss_rto_ms with probability loss_pct/100;
    the drops counter counts exactly the probes that paid it."""
    n, p, rto = 300, 0.2, 100.0

    async def body(proxies: Any, target: str) -> None:
        x = await measure_rtts(_addr(proxies, "lossy"), n, warmup=0)
        slow = int(np.sum(x >= rto))
        drops = _sample(proxies, "edgebed_link_drops_total", link="lossy", direction="up")
        sd = np.sqrt(n * p * (1 - p))
        print(f"configured loss {p:.0%} rto {rto} ms; slow probes {slow}/{n}; drops {drops}")
        assert abs(slow - n * p) <= 3.5 * sd, (slow, n * p)
        assert drops == slow
        # the penalty is the RTO: slow probes sit one RTO above the fast ones (minimums and
        # medians: robust to scheduling hiccups on busy hosts)
        fast, slow_x = x[x < rto], x[x >= rto]
        assert rto - 0.5 <= slow_x.min() - fast.min() <= rto + 5, (slow_x.min(), fast.min())
        assert rto - 1 <= np.median(slow_x) - np.median(fast) <= rto + 10

    run(_with_links({"lossy": {"up": {"loss_pct": 100 * p, "loss_rto_ms": rto}}}, body))


def test_rate_limit_one_mbit() -> None:
    async def body(proxies: Any, _: str) -> None:
        res = await measure_throughput(_addr(proxies, "slow"), 250_000)
        print(f"configured 1.000 Mbit/s, measured {res['rate_mbit']:.3f} Mbit/s")
        assert 0.95 <= res["rate_mbit"] <= 1.05, res

    run(_with_links({"slow": {"rate_mbit": 1}}, body))


def test_control_api_get_put_validation_and_metrics() -> None:
    async def body(proxies: Any, _: str) -> None:
        url = proxies.control_url
        async with httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as c:
            r = await c.get("/v1/links")
            assert r.status_code == 200 and set(r.json()["links"]) == {"a"}
            addr = _addr(proxies, "a")
            before = (await measure_rtts(addr, 10)).min()
            r = await c.put("/v1/links/a", json={"direction": "up", "delay_ms": 30})
            assert r.status_code == 200, r.text
            assert r.json()["spec"]["up"]["delay_ms"] == 30
            assert r.json()["spec"]["down"]["delay_ms"] == 0
            after = (await measure_rtts(addr, 10)).min()
            assert 29.7 <= after - before <= 33, (before, after)  # best cases: load-robust
            r = await c.put("/v1/links/a", json={"rtt_range_ms": [5, 15]})
            assert r.json()["spec"]["up"]["integer_ms"] is True
            # bad input: 422 naming the field and the range; the link is unchanged
            r = await c.put("/v1/links/a", json={"loss_pct": 140})
            assert r.status_code == 422
            assert "loss_pct must be within 0..100, got 140" in r.json()["detail"]
            assert r.json()["field"] == "up.loss_pct"
            assert r.json()["errors"][0] == {"field": "up.loss_pct", "msg": (
                "loss_pct must be within 0..100, got 140")}
            r = await c.put("/v1/links/a", json={"bogus_ms": 1})
            assert r.status_code == 422 and r.json()["field"] == "bogus_ms"
            r = await c.put("/v1/links/a", content=b"{not json", headers={
                "content-type": "application/json"})
            assert r.status_code == 400 and r.json()["field"] == "body", r.text
            r = await c.put("/v1/links/a", json=[1, 2])
            assert r.status_code == 422 and r.json()["field"] == "body", r.text
            r = await c.get("/v1/links/nope")
            assert r.status_code == 404 and r.json()["field"] == "name"
            assert r.json()["detail"] == "name: unknown link 'nope'; links: a"
            assert (await c.get("/v1/links/a")).json()["spec"]["rtt_range_ms"] == [5, 15]
            # fidelity report -> gauges; metrics exposition
            rep = {"n": 10, "ks_statistic": 0.1, "ks_pvalue": 0.5,
                   "configured": {"mean_ms": 10.0}, "achieved": {"mean_ms": 10.2}}
            assert (await c.put("/v1/links/a/fidelity", json=rep)).status_code == 200
            m = _parse((await c.get("/metrics")).text)
            key = ("edgebed_link_fidelity_rtt_seconds", (("kind", "achieved"), ("link", "a"),
                                                         ("stat", "mean")))
            assert m[key] == pytest.approx(0.0102)
            assert m[("edgebed_link_configured_delay_seconds",
                      (("direction", "up"), ("link", "a")))] == pytest.approx(0.010)
            assert m[("edgebed_link_bytes_total", (("direction", "up"), ("link", "a")))] > 0

    run(_with_links({"a": {}}, body, control="127.0.0.1:0"))


def test_target_down_closes_client_and_counts() -> None:
    async def body(proxies: Any, _: str) -> None:
        reader, writer = await asyncio.open_connection(*proxies.address("dead"))
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await asyncio.sleep(0.05)
        assert _sample(proxies, "edgebed_link_connect_errors_total", link="dead") == 1

    async def go() -> None:
        s = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = s.sockets[0].getsockname()[1]
        s.close()
        await s.wait_closed()  # nothing listens on port any more
        proxies = await serve_links({"dead": {"target": f"127.0.0.1:{port}"}},
                                    registry=CollectorRegistry())
        try:
            await body(proxies, "")
        finally:
            await proxies.close()

    run(go())


def test_subprocess_proxy_and_cli_set_show() -> None:
    """``python -m netem.proxy`` + ``edgebed link set/show`` against its control API."""
    async def echo_and(fn: Any) -> Any:
        echo = await start_echo_server()
        try:
            return await fn(f"127.0.0.1:{echo.sockets[0].getsockname()[1]}")
        finally:
            echo.close()

    async def scenario(target: str) -> None:
        with proxy_process({"device-edge": {"target": target, "rtt_range_ms": [5, 15]}}) as ready:
            addr = ready["links"]["device-edge"]
            x = await measure_rtts(addr, 40)
            assert 4.9 <= x.min() and np.median(x) < 17, x
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            cli = [sys.executable, "-m", "orchestrator.cli", "link"]
            out = subprocess.run([*cli, "set", "device-edge", "--control", ready["control"],
                                  "--direction", "down", "--delay-ms", "40"],
                                 capture_output=True, text=True, env=env, timeout=180)
            assert out.returncode == 0, out.stderr
            x = await measure_rtts(addr, 20)
            assert x.min() >= 44.9, x
            bad = subprocess.run([*cli, "set", "device-edge", "--control", ready["control"],
                                  "--loss-pct", "140"],
                                 capture_output=True, text=True, env=env, timeout=180)
            assert bad.returncode == 2
            assert "loss_pct must be within 0..100, got 140" in bad.stderr
            show = subprocess.run([*cli, "show", "--control", ready["control"]],
                                  capture_output=True, text=True, env=env, timeout=180)
            assert "device-edge" in show.stdout and "40 ms" in show.stdout, show.stdout
            proc = ready["process"]
            t0 = time.monotonic()
            proc.terminate()
            assert proc.wait(timeout=10) == 0  # clean stop on SIGTERM
            assert time.monotonic() - t0 < 5

    run(echo_and(scenario))


def test_subprocess_rejects_bad_config(tmp_path: Any) -> None:
    f = tmp_path / "links.yaml"
    f.write_text("links:\n  x:\n    target: 127.0.0.1:1\n    up: {jitter_ms: 5}\n")
    out = subprocess.run([sys.executable, "-m", "netem.proxy", "--config", str(f)],
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 2
    assert "links.x.up: jitter_ms must be within 0..delay_ms (0)" in out.stderr, out.stderr


def test_half_close_is_forwarded_after_delayed_data() -> None:
    """EOF from the client reaches the target only after the delayed bytes before it."""
    async def body(proxies: Any, _: str) -> None:
        reader, writer = await asyncio.open_connection(*proxies.address("slow-up"))
        t0 = time.monotonic()
        writer.write(b"last words")
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(), 10)  # echo closes after EOF: read to end
        assert got == b"last words"
        assert time.monotonic() - t0 >= 0.0299
        writer.close()

    run(_with_links({"slow-up": {"up": {"delay_ms": 30}}}, body))


def test_connections_closed_by_both_ends_release_their_sockets() -> None:
    """Once both directions have passed their EOF on, the proxy closes both sockets: before,
    every connection its client closed stayed open (two sockets) until the proxy stopped."""
    async def body(proxies: Any, _: str) -> None:
        fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
        for _ in range(30):
            reader, writer = await asyncio.open_connection(*proxies.address("d"))
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            await writer.wait_closed()
        for _ in range(300):
            if not proxies.links["d"].connections:
                break
            await asyncio.sleep(0.01)
        assert not proxies.links["d"].connections
        assert _sample(proxies, "edgebed_link_open_connections", link="d") == 0
        if fds is not None:
            assert len(os.listdir("/proc/self/fd")) <= fds + 2

    run(_with_links({"d": {"up": {"delay_ms": 2}}}, body))


def test_many_concurrent_connections_keep_their_own_streams() -> None:
    async def body(proxies: Any, _: str) -> None:
        async def one(i: int) -> bool:
            reader, writer = await asyncio.open_connection(*proxies.address("j"))
            msg = f"conn-{i}-".encode() * 50
            writer.write(msg)
            got = await asyncio.wait_for(reader.readexactly(len(msg)), 20)
            writer.close()
            return got == msg

        assert all(await asyncio.gather(*(one(i) for i in range(50))))
        assert _sample(proxies, "edgebed_link_connections_total", link="j") == 50

    run(_with_links({"j": {"delay_ms": 10, "jitter_ms": 5}}, body))


def test_poll_us_reported_and_validated(tmp_path: Any) -> None:
    """The ready line says how long the loop busy-polls; --poll-us overrides, out of range is
    a clear error."""
    f = tmp_path / "links.yaml"
    f.write_text("links:\n  x:\n    target: 127.0.0.1:9\n")
    for extra, expected in (([], 200.0), (["--poll-us", "0"], 0.0)):
        p = subprocess.Popen([sys.executable, "-m", "netem.proxy", "--config", str(f), *extra],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            assert p.stdout is not None
            assert json.loads(p.stdout.readline())["poll_us"] == expected
        finally:
            p.terminate()
            p.wait(timeout=10)
            if p.stdout:
                p.stdout.close()
    out = subprocess.run([sys.executable, "-m", "netem.proxy", "--config", str(f),
                          "--poll-us", "20000"], capture_output=True, text=True, timeout=30,
                         cwd=REPO)
    assert out.returncode == 2
    assert "--poll-us: poll_us must be within 0..10000, got 20000" in out.stderr, out.stderr


def test_polling_selector_returns_events_and_honours_timeouts() -> None:
    """Busy-polling must not change what select returns: ready fds at once, [] after the whole
    timeout (not after the poll window), and a write that lands mid-window is seen."""
    import socket
    import threading

    from netem.sched import PollingEpollSelector

    a, b = socket.socketpair()
    sel = PollingEpollSelector(poll_us=2000)
    try:
        sel.register(a, 1)  # EVENT_READ
        t0 = time.perf_counter()
        assert sel.select(0.02) == []
        assert time.perf_counter() - t0 >= 0.019
        threading.Timer(0.0005, b.send, args=(b"x",)).start()  # inside the 2 ms poll window
        t0 = time.perf_counter()
        ready = sel.select(1.0)
        assert [k.fileobj for k, _ in ready] == [a]
        assert time.perf_counter() - t0 < 0.5
        assert sel.select(0) == [(ready[0][0], 1)]  # still readable: nothing consumed
    finally:
        sel.close()
        a.close()
        b.close()


def test_polling_window_adapts_like_haltpoll() -> None:
    """The busy-poll window starts closed, grows (x2 from 50 µs, up to poll_us) while idle
    periods end just past it, and shrinks (/2, closed below 50 µs) when they outlast poll_us."""
    from netem.sched import PollingEpollSelector

    sel = PollingEpollSelector(poll_us=200)
    try:
        steps = []
        for idle_us in (100, 100, 150, 150, 300, 5000, 5000, 5000):
            sel._adapt(idle_us / 1e6)
            steps.append(round(sel.window_s * 1e6))
        assert steps == [50, 100, 200, 200, 100, 50, 0, 0], steps
        sel._adapt(20e-6)  # a short idle period with the window closed: polling would have won
        assert sel.window_s == pytest.approx(50e-6)
        sel._adapt(20e-6)  # ended inside the open window: it stays as it is
        assert sel.window_s == pytest.approx(50e-6)
    finally:
        sel.close()


def test_cut_link_holds_everything_until_healed() -> None:
    """A cut (partitioned) link forwards nothing, also with zero delay; healing releases what
    was held, in order, and the link works as before."""
    async def body(proxies: Any, _: str) -> None:
        reader, writer = await asyncio.open_connection(*proxies.address("l"))
        writer.write(b"before")
        assert await asyncio.wait_for(reader.readexactly(6), 2) == b"before"
        proxies.update("l", {"cut": True})
        assert proxies.links["l"].cut
        writer.write(b"held-1")
        writer.write(b"held-2")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.readexactly(1), 0.3)
        t_heal = time.monotonic()
        proxies.update("l", {"cut": False})
        got = await asyncio.wait_for(reader.readexactly(12), 2)
        assert got == b"held-1held-2"
        assert time.monotonic() - t_heal < 0.1
        with pytest.raises(ValueError, match="cut must be true or false"):
            proxies.update("l", {"cut": "yes"})
        writer.close()

    run(_with_links({"l": {}}, body))


def test_a_message_in_two_chunks_pays_one_draw() -> None:
    """An HTTP head and its body written back to back share one delay draw: the message is not
    delayed by the larger of two draws (which would bias every multi-chunk answer upwards).
    With independent draws from 5..35 ms the second half would trail the first by more than
    5 ms in about a third of the messages."""
    n = 20

    def client(addr: tuple[str, int]) -> list[float]:  # blocking, on a thread: the proxy's
        gaps = []                                     # event loop keeps reading meanwhile
        with socket.create_connection(addr) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(n):
                head, tail = b"h" * 200, bytes([i % 250]) * 300
                sock.sendall(head)
                t_spin = time.perf_counter() + 1e-3  # 1 ms apart: two reads, one message
                while time.perf_counter() < t_spin:
                    pass
                sock.sendall(tail)
                got = sock.recv(1)
                t_first = time.perf_counter()
                while len(got) < len(head) + len(tail):
                    got += sock.recv(4096)
                gaps.append((time.perf_counter() - t_first) * 1e3)
                assert got == head + tail
        return gaps

    async def body(proxies: Any, _: str) -> None:
        gaps = await asyncio.get_running_loop().run_in_executor(
            None, client, proxies.address("jittery"))
        messages = _sample(proxies, "edgebed_link_messages_total", link="jittery", direction="up")
        chunks = _sample(proxies, "edgebed_link_chunks_total", link="jittery", direction="up")
        print(f"{n} messages: {chunks:.0f} chunks, {messages:.0f} draws; head-to-tail gap "
              f"median {np.median(gaps):.2f} ms, max {max(gaps):.2f} ms")
        assert n <= messages <= n + 2 and chunks > messages, (messages, chunks)
        assert max(gaps) < 5.0, gaps

    run(_with_links({"jittery": {"up": {"delay_ms": 20, "jitter_ms": 15,
                                        "distribution": "uniform"}}}, body))
