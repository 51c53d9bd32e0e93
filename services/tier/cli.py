"""``edgebed serve``: run one tier node (named ``--tier``, of hardware class ``--class``) as an HTTP
server."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import selectors
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.tier.config import TierConfig

DEFAULT_PORT = 8000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve one tier (real LiteRT inference, emulated device time)",
        description="Serve one tier's HTTP API (see docs/api.md and docs/tiers.md).",
    )
    add_arguments(p)
    p.set_defaults(func=serve)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tier",
        help="node name (answers, metric labels); a class name (mcu, edge, cloud, gpu, npu) serves "
        "that class's defaults (or set tier: in --config)",
    )
    p.add_argument(
        "--class", dest="node_class", metavar="CLASS",
        help="hardware class whose defaults the node starts from (services/<class>/tier.yaml): "
        "mcu, edge, cloud, gpu or npu; default: the node name when it is a class (or set class: "
        "in --config)",
    )  # fmt: skip
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})"
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--config", metavar="FILE", help="YAML merged over the tier's built-in config")
    p.add_argument(
        "--experiment", metavar="FILE",
        help="take the node's config from this experiment file: its tiers.NAME section (NAME: "
        "--tier) layered over the class defaults, as `edgebed up` does (the compose stack's "
        "tier containers use this); instead of --config",
    )  # fmt: skip
    p.add_argument(
        "--device-time",
        choices=("real", "profile"),
        help="real: report host compute time; profile: hold requests for the device latency",
    )
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")


def _uvicorn_options() -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if importlib.util.find_spec("httptools"):
        # uvicorn's httptools protocol, answering unparseable requests in the tier's JSON shape
        from services.tier.protocol import TierHttpToolsProtocol

        opts["http"] = TierHttpToolsProtocol
    if importlib.util.find_spec("uvloop"):
        opts["loop"] = "uvloop"
    return opts


def config_from_args(args: argparse.Namespace) -> TierConfig:
    """The node's validated config from the command line (raises TierConfigError)."""
    from services.tier.config import TierConfigError, load_tier_config

    overrides = {"device_time": args.device_time} if args.device_time else {}
    if args.device_time:
        # The flag applies to every vision model and chain, overriding their device_time settings.
        overrides["_all_models_device_time"] = args.device_time
    node_class = getattr(args, "node_class", None)
    data = None
    if getattr(args, "experiment", None):
        if args.config:
            raise TierConfigError("--experiment and --config: give one of them")
        data = experiment_section(args.experiment, args.tier)
    return load_tier_config(
        args.tier, args.config, _expand(overrides, args.tier, args.config, node_class, data),
        node_class=node_class, config_data=data,
    )  # fmt: skip


def serve(args: argparse.Namespace) -> int:
    import prometheus_client
    import uvicorn

    from services.tier.app import create_app
    from services.tier.config import TierConfigError

    if not 0 < args.port < 65536:
        print(f"edgebed serve: --port must be within 1..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
        app = create_app(cfg)
    except TierConfigError as exc:
        print(f"edgebed serve: {exc}", file=sys.stderr)
        return 2
    prometheus_client.disable_created_metrics()  # *_created series: noise for dashboards
    # A device-hold thread that wakes must get the GIL back quickly (default switch: 5 ms).
    sys.setswitchinterval(0.0005)
    options: dict[str, Any] = dict(
        host=args.host,
        port=args.port,
        workers=1,
        access_log=False,
        log_level=args.log_level,
        server_header=False,
        timeout_graceful_shutdown=3,
        **_uvicorn_options(),
    )
    if cfg.poll_us > 0 and hasattr(selectors, "EpollSelector"):
        # Busy-poll after each event (netem.sched.PollingEpollSelector): the next request of
        # a client finds the loop awake instead of paying an idle-CPU wake-up.
        from netem.sched import polling_loop_factory

        options["loop"] = "none"
        server = uvicorn.Server(uvicorn.Config(app, **options))
        with asyncio.Runner(loop_factory=polling_loop_factory(cfg.poll_us)) as runner:
            runner.run(server.serve())
        return 0
    uvicorn.run(app, **options)
    return 0


def experiment_section(path: str, name: str | None) -> dict[str, Any]:
    """The ``tiers.<name>`` section of an experiment file as written (with ``tier: name``): the
    user layer ``edgebed up`` gives the node (orchestrator/stack/tiers.py writes the same section
    to the file it passes with ``--config``). Only the section is read; the orchestrator
    validates the whole experiment. Raises TierConfigError naming the file and the key."""
    import yaml

    from services.tier.classes import DEFAULT_NODES
    from services.tier.config import TierConfigError

    if not name:
        raise TierConfigError("--experiment needs --tier NAME: the node whose tiers.NAME section "
                              "to serve")
    where = f"--experiment {path}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise TierConfigError(f"{where}: cannot read: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TierConfigError(f"{where}: not a YAML experiment file: {exc}") from None
    if not isinstance(data, dict):
        raise TierConfigError(f"{where}: (top level): must be a mapping")
    tiers = data.get("tiers")
    if tiers is None:
        if name not in DEFAULT_NODES:
            raise TierConfigError(
                f"{where}: tiers: not declared, so the nodes are the default ones "
                f"({', '.join(DEFAULT_NODES)}), not {name!r}")
        section: Any = {}
    elif not isinstance(tiers, dict):
        raise TierConfigError(f"{where}: tiers: must be a mapping of node name to section")
    elif name not in tiers:
        raise TierConfigError(
            f"{where}: tiers.{name}: no such node (declared: {', '.join(map(str, tiers))}); a "
            "compose file serves the nodes of the experiment it was rendered from (edgebed "
            f"compose render --config {path})")
    else:
        section = tiers[name] or {}
    if not isinstance(section, dict):
        raise TierConfigError(f"{where}: tiers.{name}: must be a mapping, got "
                              f"{type(section).__name__}")
    return {**section, "tier": name}


def _expand(
    overrides: dict[str, Any], tier: str | None, config: str | None,
    node_class: str | None = None, data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn the --device-time flag into per-model and per-chain overrides (it beats their own
    settings)."""
    mode = overrides.pop("_all_models_device_time", None)
    if mode is None:
        return overrides
    from services.tier.config import load_tier_config

    base = load_tier_config(tier, config, node_class=node_class, config_data=data)
    overrides["models"] = {name: {"device_time": mode} for name in base.models}
    if base.chains:
        overrides["chains"] = {name: {"device_time": mode} for name in base.chains}
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgebed serve", description="Serve one edgebed tier.")
    add_arguments(parser)
    return serve(parser.parse_args(argv))
