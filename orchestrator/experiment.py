"""The experiment: one YAML document (or dict) of tiers, links, workload, arrivals, policies, seeds,
replay settings and a scenario timeline, validated into one model used everywhere.

``load_experiment(path)`` / ``parse_experiment(doc)`` raise :class:`ExperimentError`, whose lines
each name the offending key path and the allowed values (``links.a.delay_ms: must be within
0..60000, got -5``). Cross-references are checked too: a link or a policy naming a tier that is not
declared, a policy route to a model the tier does not serve, a scenario event naming an unknown
link or node. Plug-in modules listed under ``plugins:`` are imported first, so the policies,
arrival processes and energy models they register are known to the checks. Nothing is started
before a document validates (fail fast). The same names are used in the file and in Python.
"""

from __future__ import annotations

import copy
import importlib
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from common.validation import problems as format_problems
from models.paths import models_dir
from netem.spec import LinkSpec, Topology
from orchestrator.arrivals import ARRIVALS, make_schedule
from orchestrator.energy import ENERGY_MODELS, make_energy_model
from orchestrator.policies import POLICIES, make_policy, resolve_route
from orchestrator.profiles import SIM_LM_EXTRA_MS, split_route
from orchestrator.workload import Seeds, WorkloadSpec
from services.tier.classes import DEFAULT_NODES, ESCALATION_LADDER
from services.tier.config import TierConfig, TierConfigError, node_config_data

# the nodes an experiment without a ``tiers`` section gets: the teaching simulator's three
TIER_NAMES: tuple[str, ...] = DEFAULT_NODES
NODE_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
MAX_NODES = 64
DEVICE = "device"  # the device group of an experiment that declares none: one device
DEFAULT_MAX_DEVICES = 1000
MAX_SCENARIO_S = 7 * 24 * 3600.0


class ExperimentError(ValueError):
    """An experiment that does not validate; ``problems`` holds one line per bad key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid experiment {source}:\n  " + "\n  ".join(problems))


def merge_tier_section(name: str, section: Any) -> Any:
    """The node's class defaults (``services/<class>/tier.yaml``; the class is ``class:``, or the
    name when it names a class) with the section layered on top (a ``null`` value removes a
    key, e.g. ``models: {int8: null}``)."""
    if not isinstance(section, dict):
        return section  # let pydantic report the type error
    return node_config_data(name, section)


# ------------------------------------------------------------------------- named registries
class ArrivalSpec(BaseModel):
    """Arrival process by registry name (``orchestrator.arrivals``) and its parameters;
    ``arrival: poisson`` is short for ``{process: poisson}``."""

    model_config = ConfigDict(extra="forbid")
    process: str = "serial"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"process": v} if isinstance(v, str) else v

    @field_validator("process")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ARRIVALS:
            raise ValueError(f"must be one of {sorted(ARRIVALS)}, got {v!r}")
        return v


class PolicyRef(BaseModel):
    """A policy by registry name, with its parameters (thresholds, margins); a bare name is
    short for ``{name: NAME}``."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        names = sorted(POLICIES)
        if v not in names:
            raise ValueError(f"unknown policy, known policies: {', '.join(names)}; got {v!r}")
        return v


class EnergySpec(BaseModel):
    """Device energy model by registry name (``orchestrator.energy``) and its parameters;
    ``energy: device`` is short for ``{model: device}``."""

    model_config = ConfigDict(extra="forbid")
    model: str = "device"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"model": v} if isinstance(v, str) else v

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ENERGY_MODELS:
            raise ValueError(f"must be one of {sorted(ENERGY_MODELS)}, got {v!r}")
        return v


class PredictorSpec(BaseModel):
    """The latency predictor latency-aware policies decide with (profile + link RTT)."""

    model_config = ConfigDict(extra="forbid")
    ewma_alpha: float = Field(
        default=0.2, ge=0, le=1, allow_inf_nan=False,
        description="weight of each observed latency in the per-route EWMA (0 = never learn)")


class ReplaySettings(BaseModel):
    """How requests are sent: concurrency window, request budget, host-overhead compensation."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(default=32, ge=1, le=10_000, description="most requests in flight at once")
    request_budget_s: float = Field(
        default=300.0, gt=0, le=86_400, allow_inf_nan=False,
        description="the longest one request may take from its intended send, every attempt "
        "included; then the client gives up (outcome 'abandoned', or 'not_sent' for attempts it "
        "never started). 300 s is longer than any request of the shipped tiers takes unqueued "
        "(the MCU's SLM: 12 s), so nothing the teaching simulator completes is abandoned")
    budget_deadline_factor: float | None = Field(
        default=None, gt=0, le=1000, allow_inf_nan=False,
        description="when set, a request's budget is this many times its deadline instead "
        "(at least budget_min_s, at most request_budget_s)")
    budget_min_s: float = Field(default=1.0, gt=0, le=3600, allow_inf_nan=False)
    host_lead: Literal["auto", "off"] | float = Field(
        default="auto",
        description="compensation of this host's own HTTP overhead (client, loopback, server "
        "framing, process wake-ups), which the simulator does not have: profile-mode tiers end "
        "their device holds this many ms early (x-edgebed-host-lead-ms). auto: measured per "
        "tier on the direct path before each pass when the run knows it (local and compose "
        "stacks); off: none; a number: that many ms for every tier")
    start_lead_s: float = Field(default=0.05, ge=0, le=60, allow_inf_nan=False,
                                description="first intended send this long after the start")
    spin_s: float = Field(default=0.002, ge=0, le=0.05, allow_inf_nan=False,
                          description="yield-spin this close to a send time")
    progress: bool = Field(default=True, description="progress bar per pass")
    realtime: bool = Field(default=False, description="run the replay loop under SCHED_FIFO (root)")

    @field_validator("host_lead")
    @classmethod
    def _lead(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"must be 'auto', 'off' or a number of ms within 0..10, got {v!r}")
        if isinstance(v, int | float) and not (math.isfinite(v) and 0 <= v <= 10):
            raise ValueError(f"must be 'auto', 'off' or a number of ms within 0..10, got {v!r}")
        return v

    def request_budget(self, deadline_ms: float) -> float:
        """Seconds a request with ``deadline_ms`` may take, all attempts included."""
        if self.budget_deadline_factor is None:
            return self.request_budget_s
        by_deadline = deadline_ms / 1e3 * self.budget_deadline_factor
        return min(self.request_budget_s, max(self.budget_min_s, by_deadline))


# ------------------------------------------------------------------------------- scenario
SCENARIO_ACTIONS: tuple[str, ...] = (
    "link", "link_down", "link_up", "kill", "pause", "resume", "restart", "arrival_rate",
)
NODE_ACTIONS = ("kill", "pause", "resume", "restart")
LINK_ACTIONS = ("link", "link_down", "link_up")


class ScenarioEvent(BaseModel):
    """One timed action of the scenario timeline (``at_s`` from the start of each policy pass).

    ``link`` changes a link (``set`` holds the changes, as ``edgebed link set``), ``link_down``
    cuts it (a partition: nothing crosses until ``link_up``), ``kill`` (SIGKILL), ``pause``
    (SIGSTOP), ``resume`` (SIGCONT) and ``restart`` act on a node's process, ``arrival_rate``
    multiplies the arrival rate from then on by ``rate_factor``. ``phase`` names the period the
    event starts (recorded on every request sent in it).
    """

    model_config = ConfigDict(extra="forbid")
    at_s: float = Field(ge=0, le=MAX_SCENARIO_S, allow_inf_nan=False)
    action: Literal["link", "link_down", "link_up", "kill", "pause", "resume", "restart",
                    "arrival_rate"]
    link: str | None = None
    node: str | None = None
    set: dict[str, Any] | None = None
    rate_factor: float | None = Field(default=None, gt=0, le=1000, allow_inf_nan=False)
    phase: str | None = Field(default=None, min_length=1, max_length=40)

    @model_validator(mode="after")
    def _fields_for_action(self) -> ScenarioEvent:
        need = {"link": ("link", "set"), "link_down": ("link",), "link_up": ("link",),
                "arrival_rate": ("rate_factor",)}.get(self.action, ("node",))
        for key in need:
            if getattr(self, key) is None:
                raise ValueError(f"action {self.action} needs key {key!r}")
        allowed = {"at_s", "action", "phase", *need}
        extra = [k for k in ("link", "node", "set", "rate_factor")
                 if getattr(self, k) is not None and k not in allowed]
        if extra:
            raise ValueError(f"action {self.action} takes no {', '.join(extra)} (it uses "
                             f"{', '.join(need)})")
        return self

    @property
    def target(self) -> str:
        return self.link or self.node or ""


# ------------------------------------------------------------------------------- devices
class DeviceGroup(BaseModel):
    """A group of request sources (``devices.<group>``): ``count`` devices alike, each with its
    own id (``<group>-<i>``; the group's name when the count is 1), its own workload and
    arrival stream (seeded per device), the group's links (a link whose ``src`` is the group is
    the group's shared access medium, e.g. a cell's uplink) and its own radio.

    ``workload`` and ``arrival`` are layered over the experiment's top-level sections; ``radio``
    over the energy model's parameters (``energy.params``). ``attach`` names the access node
    (the ``@access`` selector of a route); a link from the group must lead to it.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True,
                              serialize_by_alias=True)
    count: int = Field(default=1, ge=1, le=100_000, description="devices in the group")
    device_class: str = Field(default=ESCALATION_LADDER[0], alias="class",
                              description="the devices' own hardware class (recorded)")
    attach: str | None = Field(default=None, description="access node: the first hop's end")
    workload: dict[str, Any] = Field(default_factory=dict,
                                     description="keys of the top-level workload, per device")
    arrival: ArrivalSpec | None = Field(default=None, description="the arrival process of "
                                        "each device (default: the top-level arrival)")
    radio: dict[str, Any] = Field(default_factory=dict,
                                  description="energy model parameters for these devices")

    @field_validator("device_class")
    @classmethod
    def _class(cls, v: str) -> str:
        from services.tier.classes import class_names

        if v not in class_names():
            raise ValueError(f"must be one of {list(class_names())}, got {v!r}")
        return v


@dataclass(frozen=True)
class GroupPlan:
    """One device group resolved: its devices, workload, arrival, energy parameters and the
    index of its first device among all devices (the per-device seed offset)."""

    name: str
    count: int
    device_class: str
    attach: str | None
    workload: WorkloadSpec
    arrival: ArrivalSpec
    energy_params: dict[str, Any]
    first_index: int

    def device_ids(self) -> list[str]:
        if self.count == 1:
            return [self.name]
        return [f"{self.name}-{i}" for i in range(self.count)]


def device_seeds(seeds: Seeds, index: int) -> Seeds:
    """The seeds of the ``index``-th device of the experiment: the experiment's own seeds for
    the first (so one device replays exactly what it did before device groups existed), else
    each dimension's seed mixed with the index."""
    if index == 0:
        return seeds
    return Seeds(**{dim: int(np.random.SeedSequence([int(v), index]).generate_state(1)[0])
                    for dim, v in seeds.model_dump().items()})


# ------------------------------------------------------------------------------ experiment
def _check_names(what: str, section: dict[Any, Any]) -> None:
    """Raise naming the keys of ``section`` that are not valid node or group names."""
    bad = [k for k in section if not (isinstance(k, str) and re.match(NODE_NAME_PATTERN, k))]
    if bad:
        raise ValueError(f"{what} names must be lower case letters, digits, '-' or '_' "
                         f"(1-32, starting with a letter), got {bad}")


def _default_tiers() -> dict[str, Any]:
    return {name: {} for name in TIER_NAMES}


class Experiment(BaseModel):
    """A whole experiment."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="experiment", min_length=1, max_length=80, pattern=r"^[A-Za-z0-9._-]+$")
    description: str = ""
    plugins: list[str] = Field(
        default_factory=list,
        description="Python modules imported before validation (they register policies, "
        "arrival processes or energy models)")
    seeds: Seeds = Field(default_factory=Seeds)
    tiers: dict[str, TierConfig] = Field(default_factory=_default_tiers,  # type: ignore[arg-type]
                                         validate_default=True)
    devices: dict[str, DeviceGroup] = Field(
        default_factory=dict,
        description="device groups (request sources); none declared: one device named "
        f"{DEVICE!r} with the top-level workload and arrival")
    max_devices: int = Field(default=DEFAULT_MAX_DEVICES, ge=1, le=100_000,
                             description="cap on the number of devices of all groups")
    links: dict[str, LinkSpec] = Field(default_factory=dict)
    paths: dict[str, list[str]] = Field(
        default_factory=dict,
        description="declared paths: node -> link names in order, from the group the first "
        "link starts at (else the shortest by configured mean round trip)")
    link_backend: Literal["auto", "tc", "proxy", "none"] = "proxy"
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    arrival: ArrivalSpec = Field(default_factory=ArrivalSpec)
    policies: list[PolicyRef] = Field(
        default_factory=lambda: [PolicyRef(name=p) for p in DEFAULT_POLICIES], min_length=1)
    energy: EnergySpec = Field(default_factory=EnergySpec)
    predictor: PredictorSpec = Field(default_factory=lambda: PredictorSpec())
    replay: ReplaySettings = Field(default_factory=lambda: ReplaySettings())
    scenario: list[ScenarioEvent] = Field(default_factory=list, max_length=1000)

    # the document as written (``null`` removals kept), for overrides and tier processes
    _doc: dict[str, Any] = PrivateAttr(default_factory=dict)
    _source: str = PrivateAttr("<experiment>")
    _base_dir: Path | None = PrivateAttr(None)

    @field_validator("devices", mode="before")
    @classmethod
    def _group_names(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        _check_names("device group", v)
        return {k: ({} if sec is None else sec) for k, sec in v.items()}

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_shorthand(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return v
        return Seeds.from_base(v) if isinstance(v, int) else v

    @field_validator("tiers", mode="before")
    @classmethod
    def _merge_tier_sections(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        _check_names("node", v)
        if DEVICE in v:
            raise ValueError(f"{DEVICE!r} names the default device group, not a node")
        if not v:
            raise ValueError("at least one tier is required")
        if len(v) > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes, got {len(v)}")
        return {name: merge_tier_section(name, sec or {}) for name, sec in v.items()}

    def tier_section(self, name: str) -> dict[str, Any]:
        """The ``tiers.<name>`` section as written (layered over the built-in by the tier)."""
        tiers = self._doc.get("tiers")
        if not isinstance(tiers, dict):
            return {}
        return copy.deepcopy(dict(tiers.get(name) or {}))

    @property
    def source(self) -> str:
        return self._source

    def device_latency_ms(self) -> dict[str, dict[str, float]]:
        """Configured device latency per tier and model, keyed like routes (``"mcu"``).

        Vision models: their ``latency_ms``. LM models: the base latency the simulator's table
        would give (``ttft + (short_tokens - 1) × tpot`` minus the simulator's short-request
        extra), so adding the per-length extra reproduces the tier's configured totals.
        """
        out: dict[str, dict[str, float]] = {}
        for name, tier in self.tiers.items():
            row: dict[str, float] = {}
            for model, m in tier.models.items():
                if m.latency_ms is not None:
                    row[model] = float(m.latency_ms)
            for chain, c in getattr(tier, "chains", {}).items():
                if c.latency_ms is not None:
                    row[chain] = float(c.latency_ms)
            for model, lm in tier.lm.items():
                if lm.ttft_ms is None or lm.tpot_ms is None:
                    continue
                extra = SIM_LM_EXTRA_MS.get(tier.node_class or name, {}).get("short", 0.0)
                row[model] = float(lm.ttft_ms + (lm.short_tokens - 1) * lm.tpot_ms - extra)
            out[name] = row
        return out

    # ------------------------------------------------------------------ devices and paths
    def group_names(self) -> list[str]:
        """The device groups, in the file's order (``device`` when none are declared)."""
        return list(self.devices) or [DEVICE]

    def default_group(self) -> str:
        return self.group_names()[0]

    def groups(self) -> list[GroupPlan]:
        """Every device group resolved (workload and arrival layered over the top level)."""
        if not self.devices:
            return [GroupPlan(DEVICE, 1, ESCALATION_LADDER[0], None, self.workload, self.arrival,
                              dict(self.energy.params), 0)]
        out, first = [], 0
        for name, g in self.devices.items():
            workload = WorkloadSpec.model_validate({**self.workload.model_dump(), **g.workload})
            out.append(GroupPlan(name, g.count, g.device_class, g.attach, workload,
                                 g.arrival or self.arrival, {**self.energy.params, **g.radio},
                                 first))
            first += g.count
        return out

    def n_devices(self) -> int:
        return sum(g.count for g in self.devices.values()) if self.devices else 1

    def group_paths(self, group: str | None = None) -> dict[str, Any]:
        """Each node ``group`` reaches through links, with its path
        (``orchestrator.topology.Path``); default: the first group."""
        from orchestrator.topology import node_paths

        src = group or self.default_group()
        return {n: p for n, p in node_paths(self.links, self.paths, src).items()
                if n in self.tiers}

    def node_paths(self) -> dict[str, Any]:
        """The first group's paths (the only group's, when none are declared)."""
        return self.group_paths()

    def all_paths(self) -> dict[tuple[str, str], Any]:
        """(group, node) -> path, for every group and every node it reaches through links."""
        return {(g, n): p for g in self.group_names() for n, p in self.group_paths(g).items()}

    def linked_nodes(self) -> set[str]:
        """Nodes some group reaches through links (the others are reached directly)."""
        return {n for (_, n) in self.all_paths()}

    def reachable(self, group: str | None = None) -> list[str]:
        """Nodes a device of ``group`` can send to: through its links, or directly when no
        group reaches the node through links."""
        paths = self.group_paths(group)
        linked = self.linked_nodes()
        return [n for n in self.tiers if n in paths or n not in linked]

    def node_infos(self, group: str | None = None) -> dict[str, Any]:
        """What policies know of each node ``group`` reaches (``orchestrator.policies.NodeInfo``:
        class, mean round trip from the group, slots, models)."""
        from orchestrator.policies import NodeInfo

        rtt = self.rtt_mean_ms(group)
        paths = self.group_paths(group)
        rates: dict[str, tuple[float | None, float | None]] = {}
        for name, path in paths.items():
            rates[name] = tuple(  # type: ignore[assignment]
                min((r for h in path.hops
                     if (r := getattr(self.links[h], d).rate_mbit) is not None), default=None)
                for d in ("up", "down"))
        return {name: NodeInfo(name, str(self.tiers[name].node_class), rtt.get(name, 0.0),
                               self.tiers[name].concurrency, served(self.tiers[name]),
                               *rates.get(name, (None, None)),
                               active_w=float(self.tiers[name].power.active_w))
                for name in self.reachable(group)}

    def rtt_mean_ms(self, group: str | None = None) -> dict[str, float]:
        """Configured mean round trip from ``group`` to each node it reaches along its path
        (0 for a node reached directly)."""
        out = {name: 0.0 for name in self.reachable(group)}
        for name, path in self.group_paths(group).items():
            out[name] = float(path.rtt_mean_ms)
        return out

    def topology(self) -> Topology:
        """The links as a ``netem`` topology, drawing with the experiment's link seed."""
        return Topology(links=dict(self.links), seed=self.seeds.links)

    def policy_labels(self) -> list[str]:
        """Record label per policy: its name, or name[params] when a name appears twice,
        listing the params that tell the listings of that name apart (a param every listing
        gives the same value is left out; the duplicate check rejects two listings with the
        same params)."""
        out = []
        for p in self.policies:
            same = [q.params for q in self.policies if q.name == p.name]
            shown = {k: v for k, v in sorted(p.params.items())
                     if any(k not in other or other[k] != v for other in same)}
            if len(same) > 1 and shown:  # the one without params keeps the name
                out.append(f"{p.name}[{','.join(f'{k}={v}' for k, v in shown.items())}]")
            else:
                out.append(p.name)
        return out

    def with_overrides(self, overrides: Mapping[str, Any], note: str = "overrides") -> Experiment:
        """A re-validated copy with dotted keys replaced (``{"workload.n": 200}``); a bad value
        raises :class:`ExperimentError` naming the key, as in a file."""
        doc = copy.deepcopy(self._doc)
        for dotted, value in overrides.items():
            node = doc
            keys = dotted.split(".")
            for key in keys[:-1]:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = {}
                    node[key] = child
                node = child
            node[keys[-1]] = value
        return parse_experiment(doc, f"{self._source} ({note})", base_dir=self._base_dir)


DEFAULT_POLICIES: tuple[str, ...] = (
    "always_local",
    "always_edge",
    "always_cloud",
    "confidence",
    "latency_aware",
    "hybrid",
)


# --------------------------------------------------------------------------- cross-checks
def _check_devices(exp: Experiment) -> list[str]:
    """Group names against node names, the device cap, per-group workload/arrival/radio."""
    problems: list[str] = []
    for name in exp.devices:
        if name in exp.tiers:
            problems.append(f"devices.{name}: {name!r} is also a node under tiers; names of "
                            "nodes and device groups must differ")
    total = exp.n_devices()
    if total > exp.max_devices:
        counts = ", ".join(f"{g}: {d.count}" for g, d in exp.devices.items())
        problems.append(f"devices: {total} devices ({counts}) exceed max_devices "
                        f"({exp.max_devices}); lower a count or raise max_devices (at most "
                        "100000)")
    for name, g in exp.devices.items():
        key = f"devices.{name}"
        try:
            WorkloadSpec.model_validate({**exp.workload.model_dump(), **g.workload})
        except ValidationError as exc:
            problems.extend(format_problems(exc, WorkloadSpec, ("devices", name, "workload")))
        if g.attach is not None:
            if g.attach not in exp.tiers:
                problems.append(f"{key}.attach: unknown node {g.attach!r}; nodes: "
                                f"{', '.join(sorted(exp.tiers))}")
            elif not any(lk.src == name and lk.dst == g.attach for lk in exp.links.values()):
                problems.append(f"{key}.attach: no link from {name} to {g.attach} (declare "
                                f"one under links with src: {name}, dst: {g.attach})")
    return problems


def _check_links(exp: Experiment) -> list[str]:
    problems: list[str] = []
    declared = sorted(exp.tiers)
    groups = exp.group_names()
    for lname, link in exp.links.items():
        for end in ("src", "dst"):
            name = getattr(link, end)
            if name not in groups and name not in exp.tiers:
                problems.append(
                    f"links.{lname}.{end}: {name!r} is neither a device group "
                    f"({', '.join(groups)}) nor a node declared under tiers (declared: "
                    f"{', '.join(declared)})"
                )
        if link.src == link.dst:
            problems.append(f"links.{lname}: src and dst must differ, both are {link.src!r}")
        elif link.dst in groups:
            problems.append(
                f"links.{lname}: dst must be a node; {link.dst!r} is a device group (up is "
                f"the request direction, from a group towards nodes; down the reply), got "
                f"{link.src} → {link.dst}"
            )
    pairs: dict[tuple[str, str], str] = {}
    for lname, link in exp.links.items():
        pair = (link.src, link.dst)
        if pair in pairs:
            problems.append(
                f"links.{lname}: duplicates links.{pairs[pair]} ({pair[0]} → {pair[1]})"
            )
        pairs[pair] = lname
    if problems:
        return problems
    from orchestrator.topology import check_declared_path, declared_source

    for dst, hops in exp.paths.items():
        if dst not in exp.tiers:
            problems.append(f"paths.{dst}: unknown node {dst!r}; nodes: {', '.join(declared)}")
            continue
        source = declared_source(hops, exp.links)
        if source is not None and source not in groups:
            problems.append(f"paths.{dst}[0]: a path starts at a device group "
                            f"({', '.join(groups)}); link {hops[0]} starts at node {source!r}")
            continue
        problems += check_declared_path(dst, hops, exp.links, source or groups[0])
    if problems:
        return problems
    crossed = {h for p in exp.all_paths().values() for h in p.hops}
    for lname in exp.links:
        if lname not in crossed:  # a link no request from any group ever crosses
            problems.append(
                f"links.{lname}: no path from {', '.join(repr(g) for g in groups)} crosses it "
                f"(each node is reached by its declared path or the shortest by mean RTT); "
                f"remove it or declare a path under paths"
            )
    return problems


def served(tier: TierConfig) -> tuple[str, ...]:
    """What a node answers for: its vision and LM models and its chains."""
    return (*tier.served_models, *getattr(tier, "chains", {}))


def _check_policies(exp: Experiment) -> list[str]:
    """Every route a policy may take, for every device group, resolves to a node the group
    reaches that serves the route's model (only the request kinds the group's workload
    generates need their routes served)."""
    problems: list[str] = []
    labels = exp.policy_labels()
    if len(set(labels)) != len(labels):
        problems.append(f"policies: the same policy with the same params is listed twice: {labels}")
    groups = exp.groups()
    for group in groups:
        if not exp.reachable(group.name):
            problems.append(
                f"devices.{group.name}: its devices reach no node: no link starts at "
                f"{group.name!r} and every node is reached through links from other groups; "
                f"add a link with src: {group.name}")
    if problems:
        return problems
    for i, pol in enumerate(exp.policies):
        for group in groups:
            nodes = exp.node_infos(group.name)
            where = "" if not exp.devices else f" for devices.{group.name}"
            try:
                policy = make_policy(pol.name, pol.params, nodes)
            except (TypeError, ValueError) as exc:
                problems.append(f"policies[{i}].params ({pol.name}): {exc}")
                break
            routes = policy.selectors() if hasattr(policy, "cv_routes") else policy.routes()
            if hasattr(policy, "cv_routes") and hasattr(policy, "lm_routes"):
                routes = [
                    *(policy.cv_routes if group.workload.lm_ratio < 1 else []),
                    *(policy.lm_routes if group.workload.lm_ratio > 0 else []),
                ]
            reach = sorted(nodes)
            for route in routes:
                if route in policy.unresolved:
                    problems.append(f"policies[{i}] ({pol.name}){where}: "
                                    f"{policy.unresolved[route]}")
                    continue
                resolved, why = resolve_route(route, nodes, group.attach)
                if why:
                    problems.append(f"policies[{i}] ({pol.name}){where}: {why}")
                    continue
                tier, model = split_route(resolved)
                if tier not in exp.tiers:
                    problems.append(
                        f"policies[{i}] ({pol.name}): route {route} needs node {tier!r}, which "
                        f"is not declared under tiers (declared: {', '.join(sorted(exp.tiers))})"
                    )
                elif tier not in nodes:
                    problems.append(
                        f"policies[{i}] ({pol.name}){where}: route {route} needs node {tier!r}, "
                        f"which no path from {group.name} reaches (reached: "
                        f"{', '.join(reach) or 'none'}); add a link or a path"
                    )
                elif model not in served(exp.tiers[tier]):
                    problems.append(
                        f"policies[{i}] ({pol.name}): route {route} needs model {model!r}, which "
                        f"node {tier} does not serve (tiers.{tier}.models/lm/chains: "
                        f"{', '.join(served(exp.tiers[tier]))})"
                    )
    return list(dict.fromkeys(problems))


def _check_scenario(exp: Experiment) -> list[str]:
    from netem.control import ChangeError, merge_spec

    problems: list[str] = []
    for i, ev in enumerate(exp.scenario):
        key = f"scenario[{i}]"
        if ev.action in LINK_ACTIONS:
            if ev.link not in exp.links:
                problems.append(f"{key}.link: unknown link {ev.link!r}; links: "
                                f"{', '.join(sorted(exp.links)) or '(none declared)'}")
            elif ev.set is not None:
                try:
                    merge_spec(exp.links[ev.link], ev.set)
                except ValidationError as exc:
                    problems.extend(format_problems(exc, LinkSpec, (key, "set")))
                except ChangeError as exc:
                    problems.append(f"{key}.set.{exc.field}: {exc}")
                except (ValueError, TypeError) as exc:
                    problems.append(f"{key}.set: {exc}")
        elif ev.action in NODE_ACTIONS and ev.node not in exp.tiers:
            problems.append(f"{key}.node: unknown node {ev.node!r}; nodes: "
                            f"{', '.join(sorted(exp.tiers))}")
        elif ev.action == "arrival_rate" and all(g.arrival.process == "serial"
                                                 for g in exp.groups()):
            problems.append(f"{key}: arrival_rate needs an open-loop arrival process (arrival "
                            "is serial: the next request leaves when the previous one finished)")
    return problems


def _cross_check(exp: Experiment) -> list[str]:
    """References between sections; parameters of registry entries, tried for real."""
    problems: list[str] = []
    for name, tier_cfg in exp.tiers.items():
        try:
            tier_cfg.check_memory(models_dir())
        except TierConfigError as exc:
            problems.append(f"tiers.{name}.{exc}")
    problems += _check_devices(exp)
    if problems:
        return problems
    problems += _check_links(exp)
    problems += _check_policies(exp)
    try:
        make_energy_model(exp.energy.model, exp.energy.params)
    except ValidationError as exc:
        problems.extend(format_problems(exc, BaseModel, ("energy", "params")))
    except (TypeError, ValueError) as exc:
        problems.append(f"energy.params: {exc}")
    for group in exp.groups():
        key = "arrival" if group.arrival is exp.arrival else f"devices.{group.name}.arrival"
        try:
            n = min(group.workload.n, 50)
            make_schedule(group.arrival.process, n, exp.seeds.arrivals, group.arrival.params)
        except (ValueError, OSError) as exc:
            problems.append(f"{key}.params: {exc}")
        try:
            make_energy_model(exp.energy.model, group.energy_params)
        except (TypeError, ValueError) as exc:
            problems.append(f"devices.{group.name}.radio: {exc}")
    problems += _check_scenario(exp)
    return problems


def import_plugins(modules: Any, key: str = "plugins", base_dir: Path | None = None) -> list[str]:
    """Import each plug-in module (registering its policies, arrivals, energy models), looked
    up on ``sys.path`` and then in ``base_dir`` (the experiment file's directory); returns one
    problem line per module that cannot be imported."""
    if modules is None:
        return []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        return [f"{key}: must be a list of Python module names, got {modules!r}"]
    problems = []
    for i, name in enumerate(modules):
        if name in sys.modules:
            continue
        added = base_dir is not None and str(base_dir) not in sys.path
        if added:
            sys.path.append(str(base_dir))
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure of user code is a config problem, named
            problems.append(f"{key}[{i}]: cannot import {name!r}: {type(exc).__name__}: {exc}")
        finally:
            if added:
                sys.path.remove(str(base_dir))
    return problems


def parse_experiment(
    data: Any, source: str = "<experiment>", base_dir: Path | None = None
) -> Experiment:
    """Validate an already-parsed document; raise :class:`ExperimentError` naming each bad key.

    Relative file names inside the document (a trace) are taken relative to ``base_dir``.
    """
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ExperimentError(source, [f"(top level): must be a mapping, got {kind}"])
    problems = import_plugins(data.get("plugins"), base_dir=base_dir)
    if problems:
        raise ExperimentError(source, problems)
    doc = copy.deepcopy(data)
    arrival = doc.get("arrival")
    if base_dir is not None and isinstance(arrival, dict) and isinstance(arrival.get("params"),
                                                                             dict):
        path = arrival["params"].get("path")
        if isinstance(path, str) and path and not Path(path).is_absolute():
            arrival["params"]["path"] = str((base_dir / path).resolve())
    try:
        exp = Experiment.model_validate(doc)
    except ValidationError as exc:
        raise ExperimentError(source, _merge_directions(format_problems(exc, Experiment))) from None
    exp._doc = doc
    exp._source = source
    exp._base_dir = base_dir
    problems = _cross_check(exp)
    if problems:
        raise ExperimentError(source, problems)
    return exp


def _merge_directions(problems: list[str]) -> list[str]:
    """A link shorthand key (``delay_ms: -5``) fails in both directions: report it once."""
    out: list[str] = []
    for line in problems:
        if ".down." in line and line.replace(".down.", ".up.", 1) in out:
            i = out.index(line.replace(".down.", ".up.", 1))
            out[i] = line.replace(".down.", ".", 1)
            continue
        out.append(line)
    return out


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment YAML file."""
    p = Path(path)
    if not p.exists():
        raise ExperimentError(str(p), ["file not found"])
    if not p.is_file():
        raise ExperimentError(str(p), ["not a file (a directory?): give an experiment YAML file"])
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExperimentError(str(p), [f"not UTF-8 text (byte {exc.start}): an experiment "
                                       "file is YAML"]) from None
    except OSError as exc:
        raise ExperimentError(str(p), [f"cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ExperimentError(str(p), [f"not valid YAML: {exc}"]) from None
    return parse_experiment(data, str(p), base_dir=p.parent)


def as_experiment(config: Experiment | Mapping[str, Any] | str | Path) -> Experiment:
    """An :class:`Experiment` from a model, a dict (validated) or a file path."""
    if isinstance(config, Experiment):
        return config
    if isinstance(config, str | Path):
        return load_experiment(config)
    return parse_experiment(dict(config), "<dict>")
