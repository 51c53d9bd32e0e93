"""The experiment file: one YAML document of tiers, links, workload, arrivals, policies, seeds.

``load_experiment(path)`` parses and validates it with pydantic and raises
:class:`ExperimentError` whose lines each name the offending key path and the allowed values
(``links[0].delay_ms: must be >= 0, got -5``). Cross-references are checked too: a link or a
policy naming a tier that is not declared, a policy route to a model the tier does not serve.
Nothing is started before a file validates (fail fast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.arrivals import ARRIVALS, make_schedule
from orchestrator.energy import ENERGY_MODELS, make_energy_model
from orchestrator.policies import POLICIES, make_policy
from orchestrator.profiles import SIM_LATENCY_MS, split_route
from orchestrator.workload import Seeds, WorkloadSpec

TIER_NAMES: tuple[str, ...] = ("mcu", "edge", "cloud")
MODEL_NAMES: tuple[str, ...] = ("tinycnn", "int8", "fp32", "slm", "llm")
ENDPOINTS: tuple[str, ...] = ("device", *TIER_NAMES)


class ExperimentError(ValueError):
    """An experiment file that does not validate; ``problems`` holds one line per bad key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid experiment file {source}:\n  " + "\n  ".join(problems))


# ----------------------------------------------------------------------------------- tiers
class PowerSpec(BaseModel):
    """Tier power model (emulated): watts while serving and while idle."""

    model_config = ConfigDict(extra="forbid")
    active_w: float = Field(..., ge=0, le=10_000)
    idle_w: float = Field(0.0, ge=0, le=10_000)


class TierSpec(BaseModel):
    """One tier: the models it serves, how its device time is emulated, its queue and power."""

    model_config = ConfigDict(extra="forbid")
    models: list[Literal["tinycnn", "int8", "fp32", "slm", "llm"]] = Field(..., min_length=1)
    device_mode: Literal["profile", "real"] = "profile"
    latency_ms: dict[Literal["tinycnn", "int8", "fp32", "slm", "llm"], float] = Field(
        default_factory=dict, description="device latency per model; default: simulator table"
    )
    jitter_ms: float = Field(0.0, ge=0, le=60_000)
    concurrency: int = Field(1, ge=1, le=256)
    queue_size: int = Field(16, ge=0, le=100_000)
    memory_kb: int | None = Field(None, ge=1)
    power: PowerSpec | None = None
    energy_factor: float | None = Field(None, ge=0, le=1000)

    @field_validator("latency_ms")
    @classmethod
    def _latency_non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        for model, ms in v.items():
            if not 0 <= ms <= 600_000:
                raise ValueError(f"latency_ms.{model} must be within 0..600000, got {ms}")
        return v


# ----------------------------------------------------------------------------------- links
class LinkSpecIn(BaseModel):
    """One emulated link between two endpoints (``device`` or a tier), applied in both directions.

    ``delay_ms`` is one-way; the round trip is twice it. ``jitter_ms`` spreads it according to
    ``distribution``. The simulator's "RTT uniform in [lo, hi]" is ``rtt_lo_ms``/``rtt_hi_ms``.
    """

    model_config = ConfigDict(extra="forbid")
    src: str = "device"
    dst: str
    delay_ms: float = Field(0.0, ge=0, le=60_000)
    jitter_ms: float = Field(0.0, ge=0, le=60_000)
    distribution: Literal["fixed", "uniform", "normal", "pareto"] = "fixed"
    rtt_lo_ms: float | None = Field(None, ge=0, le=120_000)
    rtt_hi_ms: float | None = Field(None, ge=0, le=120_000)
    loss_pct: float = Field(0.0, ge=0, le=100)
    rate_mbit: float | None = Field(None, gt=0, le=100_000)

    @field_validator("src", "dst")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if v not in ENDPOINTS:
            raise ValueError(f"must be one of {list(ENDPOINTS)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _rtt_range(self) -> LinkSpecIn:
        if (self.rtt_lo_ms is None) != (self.rtt_hi_ms is None):
            raise ValueError("rtt_lo_ms and rtt_hi_ms must be given together")
        if self.rtt_lo_ms is not None and self.rtt_hi_ms is not None:
            if self.rtt_hi_ms < self.rtt_lo_ms:
                raise ValueError(
                    f"rtt_hi_ms must be >= rtt_lo_ms ({self.rtt_lo_ms}), got {self.rtt_hi_ms}"
                )
            if self.delay_ms or self.jitter_ms:
                raise ValueError("give either rtt_lo_ms/rtt_hi_ms or delay_ms/jitter_ms, not both")
        if self.src == self.dst:
            raise ValueError(f"src and dst must differ, both are {self.src!r}")
        return self


# ----------------------------------------------------------------------- arrivals / policies
class ArrivalSpec(BaseModel):
    """Arrival process by registry name (``orchestrator.arrivals``) and its parameters."""

    model_config = ConfigDict(extra="forbid")
    process: str = "serial"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("process")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ARRIVALS:
            raise ValueError(f"must be one of {sorted(ARRIVALS)}, got {v!r}")
        return v


def known_policies() -> list[str]:
    """Policy names accepted in experiment files (the orchestrator's registry)."""
    return sorted(POLICIES)


class PolicyRef(BaseModel):
    """A policy by registry name, with its parameters (thresholds, margins)."""

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
        names = known_policies()
        if v not in names:
            raise ValueError(f"unknown policy, known policies: {', '.join(names)}; got {v!r}")
        return v


class EnergySpec(BaseModel):
    """Energy model by registry name (``orchestrator.energy``): ``device`` or ``simulator``."""

    model_config = ConfigDict(extra="forbid")
    model: str = "device"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ENERGY_MODELS:
            raise ValueError(f"must be one of {sorted(ENERGY_MODELS)}, got {v!r}")
        return v


# ------------------------------------------------------------------------------ experiment
class Experiment(BaseModel):
    """A whole experiment file."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("experiment", min_length=1, max_length=80)
    description: str = ""
    seeds: Seeds = Field(default_factory=Seeds)
    tiers: dict[str, TierSpec]
    links: list[LinkSpecIn] = Field(default_factory=list)
    link_backend: Literal["auto", "tc", "proxy", "none"] = "proxy"
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    arrival: ArrivalSpec = Field(default_factory=ArrivalSpec)
    policies: list[PolicyRef] = Field(..., min_length=1)
    energy: EnergySpec = Field(default_factory=EnergySpec)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_shorthand(cls, v: Any) -> Any:
        return Seeds.from_base(v) if isinstance(v, int) else v

    @field_validator("tiers")
    @classmethod
    def _tier_names(cls, v: dict[str, TierSpec]) -> dict[str, TierSpec]:
        bad = [k for k in v if k not in TIER_NAMES]
        if bad:
            raise ValueError(f"tier names must be among {list(TIER_NAMES)}, got {bad}")
        if not v:
            raise ValueError("at least one tier is required")
        return v


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _field_at(loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, Any]:
    """(model class, FieldInfo) of the field a pydantic error location points at, if found."""
    model: Any = Experiment
    info = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if isinstance(model, type) and issubclass(model, BaseModel):
            info = model.model_fields.get(part)
            if info is None:  # a dict key (tier name): stay on the value model
                continue
            ann = info.annotation
            nxt = None
            for cand in (ann, *get_args(ann), *(a for t in get_args(ann) for a in get_args(t))):
                if isinstance(cand, type) and issubclass(cand, BaseModel):
                    nxt = cand
                    break
            model = nxt
        else:
            model = None
    return model, info


def _range_text(info: Any) -> str | None:
    lo = hi = None
    lo_op, hi_op = ">=", "<="
    for m in getattr(info, "metadata", []):
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Gt):
            lo, lo_op = m.gt, ">"
        elif isinstance(m, annotated_types.Le):
            hi = m.le
        elif isinstance(m, annotated_types.Lt):
            hi, hi_op = m.lt, "<"
    if lo is not None and hi is not None and lo_op == ">=" and hi_op == "<=":
        return f"must be within {lo}..{hi}"
    if lo is not None and hi is not None:
        return f"must be {lo_op} {lo} and {hi_op} {hi}"
    if lo is not None:
        return f"must be {lo_op} {lo}"
    if hi is not None:
        return f"must be {hi_op} {hi}"
    return None


_NO_INPUT_ERRORS = ("model_type", "dict_type", "missing", "extra_forbidden")
_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _pydantic_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        # drop pydantic's internal union/validator tags from the location
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent, _ = _field_at(loc[:-1]) if len(loc) > 1 else (Experiment, None)
            allowed = f"; allowed keys: {', '.join(parent.model_fields)}" if parent else ""
            msg = f"unknown key{allowed}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] in _RANGE_ERRORS:
            msg = _range_text(_field_at(loc)[1]) or msg
        elif err["type"] == "literal_error":
            msg = f"must be one of {err['ctx']['expected']}"
        if "input" in err and err["type"] not in _NO_INPUT_ERRORS:
            got = err["input"]
            if not isinstance(got, dict | list) and "got " not in msg:
                msg += f", got {got!r}"
        problems.append(f"{_loc(loc)}: {msg}")
    return problems


def _cross_check(exp: Experiment) -> list[str]:
    """References between sections: links and policies must name declared tiers and models."""
    problems: list[str] = []
    declared = sorted(exp.tiers)
    for i, link in enumerate(exp.links):
        for end in ("src", "dst"):
            name = getattr(link, end)
            if name != "device" and name not in exp.tiers:
                problems.append(
                    f"links[{i}].{end}: tier {name!r} is not declared under tiers "
                    f"(declared: {', '.join(declared)})"
                )
    seen: set[tuple[str, str]] = set()
    for i, link in enumerate(exp.links):
        key = tuple(sorted((link.src, link.dst)))
        if key in seen:
            problems.append(f"links[{i}]: duplicate link between {key[0]} and {key[1]}")
        seen.add(key)  # type: ignore[arg-type]
    for i, pol in enumerate(exp.policies):
        try:
            policy = make_policy(pol.name, pol.params)
        except (TypeError, ValueError) as exc:
            problems.append(f"policies[{i}].params ({pol.name}): {exc}")
            continue
        routes = policy.routes()
        if hasattr(policy, "cv_routes") and hasattr(policy, "lm_routes"):
            # only the kinds of request the workload generates need their routes served
            routes = [
                *(policy.cv_routes if exp.workload.lm_ratio < 1 else []),
                *(policy.lm_routes if exp.workload.lm_ratio > 0 else []),
            ]
        for route in routes:
            tier, model = split_route(route)
            tier = tier.lower()
            if tier not in exp.tiers:
                problems.append(
                    f"policies[{i}] ({pol.name}): route {route} needs tier {tier!r}, which is not "
                    f"declared under tiers (declared: {', '.join(declared)})"
                )
            elif model not in exp.tiers[tier].models:
                problems.append(
                    f"policies[{i}] ({pol.name}): route {route} needs model {model!r}, which "
                    f"tiers.{tier}.models does not list ({', '.join(exp.tiers[tier].models)})"
                )
    try:
        make_energy_model(exp.energy.model, exp.energy.params)
    except (TypeError, ValueError, ValidationError) as exc:
        problems.append(f"energy.params: {exc}")
    try:
        n = min(exp.workload.n, 50)
        make_schedule(exp.arrival.process, n, exp.seeds.arrivals, exp.arrival.params)
    except ValueError as exc:
        problems.append(f"arrival.params: {exc}")
    return problems


def parse_experiment(
    data: Any, source: str = "<experiment>", base_dir: Path | None = None
) -> Experiment:
    """Validate an already-parsed YAML document; raise :class:`ExperimentError` naming each bad key.

    Relative file names inside the document (a trace) are taken relative to ``base_dir``.
    """
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ExperimentError(source, [f"(top level): must be a mapping, got {kind}"])
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as exc:
        raise ExperimentError(source, _pydantic_problems(exc)) from None
    if base_dir is not None and exp.arrival.process == "trace" and "path" in exp.arrival.params:
        tp = Path(str(exp.arrival.params["path"]))
        if not tp.is_absolute():
            exp.arrival.params["path"] = str((base_dir / tp).resolve())
    problems = _cross_check(exp)
    if problems:
        raise ExperimentError(source, problems)
    return exp


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment YAML file."""
    p = Path(path)
    if not p.exists():
        raise ExperimentError(str(p), ["file not found"])
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ExperimentError(str(p), [f"not valid YAML: {exc}"]) from None
    return parse_experiment(data, str(p), base_dir=p.parent)


def sim_latency_ms(tier: str, model: str) -> float | None:
    """The simulator's device latency for ``tier``/``model`` (None when the table has none)."""
    table = SIM_LATENCY_MS.get(tier.upper(), {})
    return table.get(model)
