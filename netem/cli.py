"""``edgebed link ...``: run link proxies, show and change links, probe fidelity, pick a backend."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_CONTROL = "http://127.0.0.1:9100"
STATE_FILE = "stack.json"  # written by ``edgebed up`` in $EDGEBED_STATE_DIR or ./.edgebed


def add_proxy_arguments(p: argparse.ArgumentParser) -> None:
    """The link proxy's options, for ``edgebed link proxy`` and ``python -m netem.proxy``."""
    p.add_argument("--config", required=True, help="topology YAML (links with listen/target)")
    p.add_argument("--control", default=None,
                   help="host:port of the control API (default: the file's control key)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--poll-us", type=float, default=None,
                   help="largest busy-poll window after events (adaptive, as the kernel's "
                        "haltpoll; default: the file's poll_us, 200; 0 = off)")
    p.add_argument("--spin-us", type=float, default=None,
                   help="poll this long before each timed release instead of sleeping "
                        "(default: the file's spin_us, 0 = off)")
    p.add_argument("--realtime", action="store_true",
                   help="run under SCHED_FIFO (root) for tight timing on a busy host")
    p.add_argument("--no-kernel-stamps", dest="stamps", action="store_false",
                   help="anchor delays at the time the proxy reads a chunk instead of the "
                        "kernel's receive timestamp")
    p.add_argument("--token-file", default=None,
                   help="file (mode 0600) holding the control API's token: every PUT then "
                        "needs 'Authorization: Bearer <token>' (GETs stay open)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("link", help="emulated links: proxy, show, set, probe, backend, tc apply")
    lsub = p.add_subparsers(dest="link_command", metavar="ACTION")

    px = lsub.add_parser("proxy", help="run one userspace link proxy per link of a topology file")
    add_proxy_arguments(px)
    px.set_defaults(func=_proxy)

    where = ("default: the running local stack's (its state file $EDGEBED_STATE_DIR/stack.json "
             "or ./.edgebed/stack.json), else $EDGEBED_LINK_CONTROL, else " + DEFAULT_CONTROL)
    sh = lsub.add_parser("show", help="show links (from a running proxy, or a topology file)")
    sh.add_argument("--control", default=None, help=f"proxy control URL ({where})")
    sh.add_argument("--token-file", default=None, help="not needed for reading (accepted for "
                                                       "symmetry with set)")
    sh.add_argument("--config", default=None, help="show this topology file instead")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=_show)

    st = lsub.add_parser("set", help="change a running link (partial update)")
    st.add_argument("name")
    st.add_argument("--control", default=None, help=f"proxy control URL ({where})")
    st.add_argument("--token-file", default=None,
                    help="file holding the control API's token (default: the running local "
                         "stack's link_token_file)")
    st.add_argument("--direction", choices=("up", "down", "both"), default="both")
    st.add_argument("--delay-ms", type=float)
    st.add_argument("--jitter-ms", type=float)
    st.add_argument("--distribution", choices=("uniform", "normal", "pareto"))
    st.add_argument("--loss-pct", type=float)
    st.add_argument("--loss-rto-ms", type=float)
    st.add_argument("--rate-mbit", type=float)
    st.add_argument("--unlimited", action="store_true", help="remove the rate limit")
    st.add_argument("--rtt-range-ms", nargs=2, type=int, metavar=("LO", "HI"))
    st.set_defaults(func=_set)

    from netem.probe import add_rtt_arguments

    pr = lsub.add_parser("probe", help="measure a link's round trips vs its configured law")
    add_rtt_arguments(pr)
    pr.add_argument("--realtime", action="store_true", help="SCHED_FIFO (root) while probing")
    pr.set_defaults(func=_probe)

    ec = lsub.add_parser("echo", help="run a TCP echo server (probe target)")
    ec.add_argument("--bind", default="127.0.0.1:7007")
    ec.add_argument("--realtime", action="store_true")
    ec.set_defaults(func=_echo)

    tp = lsub.add_parser("throughput", help="bulk echo transfer through a link, Mbit/s")
    tp.add_argument("--target", required=True)
    tp.add_argument("--bytes", type=int, default=250_000)
    tp.set_defaults(func=_throughput)

    be = lsub.add_parser("backend", help="detect capabilities and pick tc or proxy (with reason)")
    be.add_argument("--backend", default="auto", choices=("auto", "tc", "proxy"))
    be.add_argument("--json", action="store_true")
    be.set_defaults(func=_backend)

    ap = lsub.add_parser("apply", help="tc backend: shape a device with netem (root)")
    ap.add_argument("--config", required=True, help="topology YAML")
    ap.add_argument("--dev", required=True)
    ap.add_argument("--peer", action="append", default=[], metavar="LINK=IP",
                    help="peer address per link (needed with several links)")
    ap.add_argument("--netns", default=None)
    ap.add_argument("--no-ingress", action="store_true", help="shape only the up direction")
    ap.add_argument("--dry-run", action="store_true", help="print the tc/ip commands only")
    ap.set_defaults(func=_apply)

    cl = lsub.add_parser("clear", help="tc backend: remove edgebed's qdiscs from a device")
    cl.add_argument("--dev", required=True)
    cl.add_argument("--netns", default=None)
    cl.set_defaults(func=_clear)

    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _proxy(args: argparse.Namespace) -> int:
    from netem.proxy import run

    return run(args)


def state_file_path() -> Path:
    """The local stack's state file: ``$EDGEBED_STATE_DIR/stack.json`` or
    ``./.edgebed/stack.json``."""
    return Path(os.environ.get("EDGEBED_STATE_DIR") or ".edgebed") / STATE_FILE


class Target:
    """Where ``link show``/``link set`` talk to and with which token, and why (for errors)."""

    def __init__(self, control: str, source: str, token_file: str | None) -> None:
        self.control = control.rstrip("/")
        self.source = source
        self.token_file = token_file


def resolve_target(control: str | None, token_file: str | None) -> Target:
    """``--control``, else the running local stack's state file (plain JSON, keys
    ``link_control_urls.links`` and ``link_token_file``), else ``$EDGEBED_LINK_CONTROL``,
    else the default; ``--token-file`` else the state file's. ``ValueError`` naming the file
    when the state file exists but is unusable."""
    if control:
        return Target(control, "--control", token_file)
    path = state_file_path()
    if path.exists():
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"stack state file {path} is unreadable ({exc}); pass --control "
                             f"URL or remove the file") from None
        urls = state.get("link_control_urls") if isinstance(state, dict) else None
        url = urls.get("links") if isinstance(urls, dict) else None
        if not isinstance(url, str) or not url:
            raise ValueError(f"the stack in {path} runs no link proxy control API (no "
                             f"link_control_urls.links: link backend "
                             f"{state.get('link_backend', '?') if isinstance(state, dict) else '?'}); "
                             f"pass --control URL")
        tf = state.get("link_token_file")
        return Target(url, f"the stack state file {path}",
                      token_file or (tf if isinstance(tf, str) and tf else None))
    env = os.environ.get("EDGEBED_LINK_CONTROL")
    if env:
        return Target(env, "$EDGEBED_LINK_CONTROL", token_file)
    return Target(DEFAULT_CONTROL, f"the default (no stack state file at {path}, "
                                   f"$EDGEBED_LINK_CONTROL unset)", token_file)


def _http(method: str, target: Target, path: str, body: Any = None) -> tuple[int, Any]:
    import httpx

    from netem.auth import auth_headers, read_token_file

    headers: dict[str, str] = {}
    if method != "GET" and target.token_file:
        try:
            headers = auth_headers(read_token_file(target.token_file))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 0, None
    url = f"{target.control}{path}"
    try:
        resp = httpx.request(method, url, json=body, headers=headers, timeout=10,
                             trust_env=False)
    except httpx.HTTPError as exc:
        print(f"error: no link proxy control API answers at {target.control} (from "
              f"{target.source}): {exc}. Is a stack or link proxy running? Start one "
              f"(edgebed up, edgebed link proxy) or pass --control URL.", file=sys.stderr)
        return 0, None
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, resp.text


def _error_text(code: int, resp: Any) -> str:
    msg = resp.get("detail") if isinstance(resp, dict) else resp
    if code == 401:
        msg = f"{msg} (pass --token-file, or run from the stack's directory)"
    return f"error ({code}): {msg}"


def _show(args: argparse.Namespace) -> int:
    if args.config:
        from netem.spec import load_topology

        try:
            topo = load_topology(args.config)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        rows = {n: {"spec": lk.model_dump(mode="json"), "description": lk.describe(),
                    "configured_rtt_mean_ms": lk.rtt_mean_ms(), "listen": lk.listen,
                    "target": lk.target} for n, lk in topo.links.items()}
        paths: dict[str, Any] = {n: {"listen": p.listen, "target": p.target,
                                     "configured": topo.path_law(n).summary()}
                                 for n, p in topo.paths.items()}
    else:
        try:
            target = resolve_target(args.control, args.token_file)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        code, body = _http("GET", target, "/v1/links")
        if code != 200:
            if code:
                print(_error_text(code, body), file=sys.stderr)
            return 1
        rows = body["links"]
        code, body = _http("GET", target, "/v1/paths")
        paths = body["paths"] if code == 200 and isinstance(body, dict) else {}
    if args.json:  # the links, as before (paths: GET /v1/paths)
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'link':<16} {'listen':<22} {'target':<22} {'RTT mean ms':>11}  law")
    for name, r in rows.items():
        print(f"{name:<16} {r.get('listen') or '-':<22} {r.get('target') or '-':<22} "
              f"{r['configured_rtt_mean_ms']:>11.2f}  {r['description']}")
    if paths:
        print(f"\n{'path':<16} {'listen':<22} {'target':<22} {'RTT mean ms':>11}  hops")
        for name, r in paths.items():
            cfg = r["configured"]
            print(f"{name:<16} {r.get('listen') or '-':<22} {r.get('target') or '-':<22} "
                  f"{cfg['rtt_mean_ms']:>11.2f}  {' → '.join(cfg['hops'])} "
                  f"({' → '.join(cfg['nodes'])})")
    return 0


def _set(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.rtt_range_ms:
        body["rtt_range_ms"] = list(args.rtt_range_ms)
    else:
        body["direction"] = args.direction
    for key in ("delay_ms", "jitter_ms", "distribution", "loss_pct", "loss_rto_ms", "rate_mbit"):
        v = getattr(args, key)
        if v is not None:
            body[key] = v
    if args.unlimited:
        body["rate_mbit"] = None
    try:
        target = resolve_target(args.control, args.token_file)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from urllib.parse import quote

    code, resp = _http("PUT", target, f"/v1/links/{quote(args.name, safe='')}", body)
    if code == 200:
        print(f"{args.name}: {resp['description']}")
        return 0
    if code:
        print(_error_text(code, resp), file=sys.stderr)
    return 2


def _probe(args: argparse.Namespace) -> int:
    from netem.probe import run_rtt
    from netem.sched import set_realtime

    if args.realtime:
        print(f"probe scheduling: {set_realtime()}", file=sys.stderr)
    return run_rtt(args)


def _echo(args: argparse.Namespace) -> int:
    from netem.probe import run_serve
    from netem.sched import set_realtime

    if args.realtime:
        print(f"echo scheduling: {set_realtime()}", file=sys.stderr)
    return run_serve(args)


def _throughput(args: argparse.Namespace) -> int:
    from netem.probe import run_throughput

    return run_throughput(args)


def _backend(args: argparse.Namespace) -> int:
    from netem.backends import describe_choice, select_backend

    try:
        choice = select_backend(args.backend)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(choice, indent=2) if args.json else describe_choice(choice))
    return 0


def _apply(args: argparse.Namespace) -> int:
    from netem import tc
    from netem.spec import load_topology

    try:
        topo = load_topology(args.config)
        peers = dict(p.split("=", 1) for p in args.peer)
        if args.dry_run:
            argvs = tc.build_apply_argvs(topo, args.dev, peer_ips=peers or None,
                                         ingress=not args.no_ingress)
            for argv in argvs:
                print(" ".join(tc.in_netns(argv, args.netns)))
            return 0
        tc.apply(topo, args.dev, peer_ips=peers or None, ingress=not args.no_ingress,
                 netns=args.netns)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"applied {len(topo.links)} link(s) on {args.dev}")
    return 0


def _clear(args: argparse.Namespace) -> int:
    from netem import tc

    tc.clear(args.dev, netns=args.netns)
    print(f"cleared {args.dev}")
    return 0
