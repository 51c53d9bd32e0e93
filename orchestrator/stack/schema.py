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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from models.paths import models_dir
from netem.spec import LinkSpec, Topology
from orchestrator.arrivals import ARRIVALS, make_schedule
from orchestrator.energy import ENERGY_MODELS, make_energy_model
from orchestrator.policies import POLICIES, make_policy
from orchestrator.profiles import SIM_LM_EXTRA_MS, split_route
from orchestrator.workload import Seeds, WorkloadSpec
from services.tier.config import (
    TierConfig,
    TierConfigError,
    builtin_config_path,
    deep_merge,
    read_yaml,
)

TIER_NAMES: tuple[str, ...] = ("mcu", "edge", "cloud")


class ExperimentError(ValueError):
    """An experiment file that does not validate; ``problems`` holds one line per bad key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid experiment file {source}:\n  " + "\n  ".join(problems))


# Tiers are ``services.tier.config.TierConfig`` objects: each ``tiers.<name>`` section is
# layered over the tier's built-in ``services/<name>/tier.yaml`` (a ``null`` value removes a key,
# e.g. ``models: {int8: null}``), so ``tiers: {mcu: {}}`` means "the MCU as shipped".
# Links are ``netem.spec.LinkSpec`` objects keyed by link name (the teaching simulator's RTT
# range is ``rtt_range_ms: [lo, hi]``).


def merge_tier_section(name: str, section: Any) -> Any:
    """The tier's built-in config with the experiment's section layered on top."""
    if not isinstance(section, dict):
        return section  # let pydantic report the type error
    path = builtin_config_path(name)
    base = read_yaml(path) if path.is_file() else {}
    merged = deep_merge(base, section)
    merged["tier"] = name
    return merged


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
    tiers: dict[str, TierConfig]
    links: dict[str, LinkSpec] = Field(default_factory=dict)
    link_backend: Literal["auto", "tc", "proxy", "none"] = "proxy"
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    arrival: ArrivalSpec = Field(default_factory=ArrivalSpec)
    policies: list[PolicyRef] = Field(..., min_length=1)
    energy: EnergySpec = Field(default_factory=EnergySpec)

    # each tier's section as written (``null`` removals kept), for the tier process's --config
    _tier_sections: dict[str, dict[str, Any]] = PrivateAttr(default_factory=dict)

    def tier_section(self, name: str) -> dict[str, Any]:
        """The ``tiers.<name>`` section as written in the file (layered over the built-in)."""
        return dict(self._tier_sections.get(name, {}))

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_shorthand(cls, v: Any) -> Any:
        return Seeds.from_base(v) if isinstance(v, int) else v

    @field_validator("tiers", mode="before")
    @classmethod
    def _merge_tier_sections(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        bad = [k for k in v if k not in TIER_NAMES]
        if bad:
            raise ValueError(f"tier names must be among {list(TIER_NAMES)}, got {bad}")
        if not v:
            raise ValueError("at least one tier is required")
        return {name: merge_tier_section(name, sec or {}) for name, sec in v.items()}

    def device_latency_ms(self) -> dict[str, dict[str, float]]:
        """Configured device latency per tier and model, keyed like the simulator ("MCU").

        Vision models: their ``latency_ms``. LM models: the base latency the simulator's table
        would give (``ttft + (short_tokens - 1) × tpot`` minus the simulator's short-request extra),
        so adding the per-length extra reproduces the tier's configured totals.
        """
        out: dict[str, dict[str, float]] = {}
        for name, tier in self.tiers.items():
            row: dict[str, float] = {}
            for model, m in tier.models.items():
                if m.latency_ms is not None:
                    row[model] = float(m.latency_ms)
            for model, lm in tier.lm.items():
                if lm.ttft_ms is None or lm.tpot_ms is None:
                    continue
                extra = SIM_LM_EXTRA_MS.get(name.upper(), {}).get("short", 0.0)
                row[model] = float(lm.ttft_ms + (lm.short_tokens - 1) * lm.tpot_ms - extra)
            out[name.upper()] = row
        return out

    def rtt_mean_ms(self) -> dict[str, float]:
        """Configured mean round trip from ``device`` to each tier (0 without link), "MCU"-keyed."""
        out = {name.upper(): 0.0 for name in self.tiers}
        for link in self.links.values():
            if link.src == "device" and link.dst in self.tiers:
                out[link.dst.upper()] = float(link.rtt_mean_ms())
            elif link.dst == "device" and link.src in self.tiers:
                out[link.src.upper()] = float(link.rtt_mean_ms())
        return out

    def topology(self) -> Topology:
        """The links as a ``netem`` topology, drawing with the experiment's link seed."""
        return Topology(links=dict(self.links), seed=self.seeds.links)


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
    lo: Any = None
    hi: Any = None
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
    return _merge_directions(problems)


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


def _cross_check(exp: Experiment) -> list[str]:
    """References between sections: links and policies must name declared tiers and models."""
    problems: list[str] = []
    declared = sorted(exp.tiers)
    for name, tier_cfg in exp.tiers.items():
        try:
            tier_cfg.check_memory(models_dir())
        except TierConfigError as exc:
            problems.append(f"tiers.{name}.{exc}")
    for lname, link in exp.links.items():
        for end in ("src", "dst"):
            name = getattr(link, end)
            if name != "device" and name not in exp.tiers:
                problems.append(
                    f"links.{lname}.{end}: {name!r} is neither 'device' nor a tier declared "
                    f"under tiers (declared: {', '.join(declared)})"
                )
        if link.src == link.dst:
            problems.append(f"links.{lname}: src and dst must differ, both are {link.src!r}")
    pairs: dict[tuple[str, str], str] = {}
    for lname, link in exp.links.items():
        pair = (link.src, link.dst)
        if pair in pairs:
            problems.append(
                f"links.{lname}: duplicates links.{pairs[pair]} ({pair[0]} → {pair[1]})"
            )
        pairs[pair] = lname
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
            tier_key, model = split_route(route)
            tier = tier_key.lower()
            if tier not in exp.tiers:
                problems.append(
                    f"policies[{i}] ({pol.name}): route {route} needs tier {tier!r}, which is not "
                    f"declared under tiers (declared: {', '.join(declared)})"
                )
            elif model not in exp.tiers[tier].served_models:
                served = ", ".join(exp.tiers[tier].served_models)
                problems.append(
                    f"policies[{i}] ({pol.name}): route {route} needs model {model!r}, which "
                    f"tier {tier} does not serve (tiers.{tier}.models/lm: {served})"
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
    exp._tier_sections = {k: dict(v or {}) for k, v in (data.get("tiers") or {}).items()}
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
