"""A tier node's configuration as one typed settings object, loaded from YAML + environment +
overrides.

A node has a name (``tier``: reported in answers and metric labels) and a hardware class
(``class``, from :mod:`services.tier.classes`). Precedence (lowest first): the class defaults
``services/<class>/tier.yaml``, a user YAML file (``--config``), environment variables
``EDGEBED_TIER_<KEY>`` (nested keys joined with ``__``, e.g.
``EDGEBED_TIER_MODELS__INT8__LATENCY_MS=30``), explicit overrides (CLI flags). Unset device
latencies, energy factor and LM token profiles default to the teaching simulator's table for the
node's class.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from common.validation import problems
from models import catalog
from services.tier import classes, simulator

SERVICES_DIR = Path(__file__).resolve().parents[1]
ENV_PREFIX = "EDGEBED_TIER_"
DeviceTime = Literal["real", "profile"]
EnergyModelName = Literal["power", "simulator"]
OnDisconnect = Literal["finish", "abort"]


class TierConfigError(ValueError):
    """A tier configuration is invalid; the message names the key and the allowed range."""


def _class_required(name: str) -> str:
    return (
        f"class: required for node {name!r}, whose name is not a class (--class CLASS, or "
        f"'class:' in the config file); must be one of {classes.allowed_text()}"
    )


# --- jitter distributions: a small registry keyed by the ``dist`` name used in config files ---


class _Jitter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def sample_ms(self, rng: np.random.Generator) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def expected_ms(self) -> float:  # pragma: no cover - interface
        """The draws' mean (before clipping at 0), for backlog estimates."""
        raise NotImplementedError


class NormalJitter(_Jitter):
    """Gaussian jitter around the configured latency (result clipped at 0 ms)."""

    dist: Literal["normal"]
    sd_ms: float = Field(ge=0, le=1e6)

    def sample_ms(self, rng: np.random.Generator) -> float:
        return float(rng.normal(0.0, self.sd_ms))

    def expected_ms(self) -> float:
        return 0.0


class UniformJitter(_Jitter):
    """Uniform jitter in [low_ms, high_ms] added to the configured latency."""

    dist: Literal["uniform"]
    low_ms: float = Field(ge=-1e6, le=1e6)
    high_ms: float = Field(ge=-1e6, le=1e6)

    @model_validator(mode="after")
    def _ordered(self) -> UniformJitter:
        if self.high_ms < self.low_ms:
            raise ValueError(f"high_ms must be >= low_ms ({self.low_ms}), got {self.high_ms}")
        return self

    def sample_ms(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low_ms, self.high_ms))

    def expected_ms(self) -> float:
        return (self.low_ms + self.high_ms) / 2.0


class ExponentialJitter(_Jitter):
    """Exponentially distributed extra delay (a long tail) with the given mean."""

    dist: Literal["exponential"]
    mean_ms: float = Field(gt=0, le=1e6)

    def sample_ms(self, rng: np.random.Generator) -> float:
        return float(rng.exponential(self.mean_ms))

    def expected_ms(self) -> float:
        return self.mean_ms


Jitter = Annotated[NormalJitter | UniformJitter | ExponentialJitter, Field(discriminator="dist")]


# --- per-model and per-tier settings ---


class BatchingConfig(BaseModel):
    """Dynamic batching of one model (class ``gpu``), as NVIDIA Triton's dynamic batcher does: a
    batch forms when ``max_batch`` requests wait or the oldest has waited ``max_queue_delay_ms``;
    a batch of k requests takes ``base_ms + per_item_ms × k`` of device time."""

    model_config = ConfigDict(extra="forbid")

    max_batch: int = Field(8, ge=1, le=1024, description="largest batch (Triton max_batch_size)")
    max_queue_delay_ms: float = Field(
        0.0, ge=0, le=60_000,
        description="longest a request waits for others to join its batch (Triton "
        "max_queue_delay_microseconds, here in ms; 0: no waiting)",
    )  # fmt: skip
    base_ms: float = Field(ge=0, le=600_000, description="device time of a batch, fixed part")
    per_item_ms: float = Field(ge=0, le=600_000, description="device time per request in a batch")

    def batch_ms(self, size: int) -> float:
        return self.base_ms + self.per_item_ms * size


class VisionModelConfig(BaseModel):
    """A LiteRT model served by the tier and its emulated device profile."""

    model_config = ConfigDict(extra="forbid")

    file: str | None = Field(
        None, description="file name in the models directory (default NAME.tflite)"
    )
    latency_ms: float | None = Field(
        None, ge=0, le=600_000, description="device latency (profile mode)"
    )
    jitter: Jitter | None = None
    device_time: DeviceTime | None = Field(None, description="overrides the tier's device_time")
    batching: BatchingConfig | None = Field(
        None, description="dynamic batching (class gpu only); device time per batch, not per request"
    )


class ChainConfig(BaseModel):
    """A research chain (``models.catalog``: split-fp32, split-int8, exit-fp32, exit-int8) served
    segment by segment on ``POST /v1/chain``, and its emulated device profile."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float | None = Field(
        None, ge=0, le=600_000,
        description="device time of the whole chain (profile mode); a request is held for the "
        "share of it of the segments it runs (default: the class's simulator latency of the "
        "chain's base model, int8 or fp32)",
    )  # fmt: skip
    jitter: Jitter | None = Field(
        None, description="added to the device time, scaled by the share of the chain run"
    )
    segments: list[int] | None = Field(
        None, min_length=2, max_length=2,
        description="[first, last]: the segments this node holds (1-based, inclusive; default "
        "all)",
    )  # fmt: skip
    device_time: DeviceTime | None = Field(None, description="overrides the tier's device_time")

    @property
    def held(self) -> range:
        """The 1-based indices of the segments held (once the config is validated)."""
        assert self.segments is not None
        return range(self.segments[0], self.segments[1] + 1)


class LMConfig(BaseModel):
    """An emulated language model: time to first token + tokens × time per output token."""

    model_config = ConfigDict(extra="forbid")

    ttft_ms: float | None = Field(None, ge=0, le=3_600_000)
    tpot_ms: float | None = Field(None, ge=0, le=60_000)
    quality_short: float | None = Field(None, ge=0, le=1)
    quality_long: float | None = Field(None, ge=0, le=1)
    short_tokens: int = Field(simulator.LM_SHORT_TOKENS, ge=1, le=4096)
    long_tokens: int = Field(simulator.LM_LONG_TOKENS, ge=1, le=4096)


class PowerModel(BaseModel):
    """Device power draw: ``active_w`` while computing, ``idle_w`` while a request waits."""

    model_config = ConfigDict(extra="forbid")

    active_w: float = Field(ge=0, le=100_000)
    idle_w: float = Field(ge=0, le=100_000)


class TierConfig(BaseSettings):
    """Everything that makes one tier node (``tier``: its name) behave like its device (``class``:
    its hardware class, which gives the defaults)."""

    model_config = SettingsConfigDict(
        extra="forbid", validate_default=True,
        validate_by_alias=True, validate_by_name=True, serialize_by_alias=True,
    )  # fmt: skip

    tier: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    node_class: str | None = Field(
        None, alias="class",
        description="hardware class (services/tier/classes.py); default: the node's name when that "
        "is a class",
    )  # fmt: skip
    device_time: DeviceTime = "profile"
    concurrency: int = Field(1, ge=1, le=256, description="requests in service at once")
    queue_limit: int = Field(16, ge=0, le=100_000, description="requests allowed to wait")
    memory_bytes: int = Field(ge=1, le=2**50, description="model memory budget")
    energy_model: EnergyModelName = "power"
    energy_factor: float | None = Field(None, ge=0, le=1e6)
    power: PowerModel
    models: dict[str, VisionModelConfig] = Field(default_factory=dict)
    lm: dict[str, LMConfig] = Field(default_factory=dict)
    chains: dict[str, ChainConfig] = Field(
        default_factory=dict,
        description="research chains served on /v1/chain: split-fp32, split-int8, exit-fp32, "
        "exit-int8",
    )
    jitter_seed: int = Field(0, ge=0)
    max_body_bytes: int = Field(
        262_144, ge=1024, le=64 * 2**20,
        description="larger request bodies are refused with 413 before they are read",
    )
    on_disconnect: OnDisconnect = Field(
        "finish",
        description="a client that goes away while its request waits or is held: 'finish' (a "
        "device without cancellation: the request is served and keeps its slot to the end) or "
        "'abort' (leave the queue / stop the hold at once and free the slot)",
    )
    offload_compute: bool = Field(
        False, description="run LiteRT on a worker thread instead of the event loop (see bench)"
    )
    realtime_holds: bool = Field(
        True, description="try SCHED_FIFO for the (sleeping) device-hold threads: sub-ms holds"
    )
    poll_us: float = Field(
        200.0, ge=0, le=10_000,
        description="the largest window (µs) the event loop busy-polls after events before "
        "sleeping, adapted to the traffic as the kernel's haltpoll does (Linux; saves an idle-CPU "
        "wake-up per request on VMs without guest halt polling); 0 = sleep at once (uvloop when "
        "installed)",
    )

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        # Construction is explicit; load_tier_config layers files, env and overrides itself.
        return (init_settings,)

    @model_validator(mode="before")
    @classmethod
    def _class_first(cls, data: Any) -> Any:
        """A missing or unknown class is the one error reported: every default comes from it."""
        if isinstance(data, dict):
            value = data.get("class", data.get("node_class"))
            if value is not None:
                classes.node_class(value)  # NodeClassError (a ValueError) names the allowed values
            elif isinstance(data.get("tier"), str) and data["tier"] not in classes.CLASSES:
                raise ValueError(_class_required(data["tier"]))
        return data

    @model_validator(mode="after")
    def _fill_defaults(self) -> TierConfig:
        cls = self._resolve_class()
        table = simulator.MODEL_LATENCY_MS.get(cls.name, {})
        if not self.models and not self.lm:
            raise ValueError("models: a tier must serve at least one model (models or lm)")
        for name, m in self.models.items():
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"models: model name must be alphanumeric, got {name!r}")
            if name in simulator.LM_MODELS:
                raise ValueError(
                    f"models.{name}: {name} is a language model; configure it under lm"
                )
            if m.file is None:
                m.file = f"{name}.tflite"
            if m.batching is not None:
                self._check_batching(cls, name, m)
            if m.latency_ms is None:
                if name not in table:
                    raise ValueError(
                        f"models.{name}.latency_ms: required (no simulator default for class "
                        f"{cls.name}, model {name})"
                    )
                m.latency_ms = table[name]
            if m.device_time is None:
                m.device_time = self.device_time
        if cls.int8_only:
            self._check_int8(cls)
        self._fill_chains(cls, table)
        if self.lm and not cls.lm:
            raise ValueError(
                f"lm: class {cls.name} serves no language model, got {sorted(self.lm)}; remove "
                f"lm, or use a class that does ({', '.join(classes.lm_classes())})"
            )
        for name, lm in self.lm.items():
            if name not in simulator.LM_MODELS:
                raise ValueError(
                    f"lm: model must be one of {list(simulator.LM_MODELS)}, got {name!r}"
                )
            if lm.long_tokens <= lm.short_tokens:
                raise ValueError(
                    f"lm.{name}.long_tokens must be > short_tokens, got {lm.long_tokens}"
                )
            if lm.ttft_ms is None or lm.tpot_ms is None:
                if cls.name not in simulator.LM_EXTRA_MS:
                    raise ValueError(
                        f"lm.{name}.ttft_ms/tpot_ms: required for class {cls.name} (no simulator "
                        "default)"
                    )
                ttft_ms, tpot_ms = simulator.lm_token_profile(cls.name, name)
                lm.ttft_ms = ttft_ms if lm.ttft_ms is None else lm.ttft_ms
                lm.tpot_ms = tpot_ms if lm.tpot_ms is None else lm.tpot_ms
            quality = simulator.LM_QUALITY[name]
            lm.quality_short = quality["short"] if lm.quality_short is None else lm.quality_short
            lm.quality_long = quality["long"] if lm.quality_long is None else lm.quality_long
        if self.energy_factor is None:
            if cls.name not in simulator.ENERGY_FACTOR:
                raise ValueError(
                    f"energy_factor: required for class {cls.name} (no simulator default)"
                )
            self.energy_factor = simulator.ENERGY_FACTOR[cls.name]
        overlap = set(self.models) & set(self.lm)
        if overlap:
            raise ValueError(f"models/lm: a name cannot be both, got {sorted(overlap)}")
        overlap = set(self.served_models) & set(self.chains)
        if overlap:
            raise ValueError(f"models/chains: a name cannot be both, got {sorted(overlap)}")
        return self

    def _fill_chains(self, cls: classes.NodeClass, table: dict[str, float]) -> None:
        """Check each chain against the manifest (``models.catalog``): its name, the segments
        held, the INT8-only rule; default its latency (the class's simulator latency of the
        chain's base model) and device time."""
        for name, c in self.chains.items():
            if name not in catalog.CHAIN_SOURCES:
                raise ValueError(
                    f"chains.{name}: unknown chain; must be one of "
                    f"{', '.join(catalog.chain_names())}"
                )
            try:
                spec = catalog.chain_spec(name)
            except (OSError, ValueError) as exc:
                raise ValueError(f"chains.{name}: {exc}") from None
            first, last = c.segments or (1, spec.n)
            if not 1 <= first <= last <= spec.n:
                raise ValueError(
                    f"chains.{name}.segments: must be [first, last] with 1 <= first <= last <= "
                    f"{spec.n} ({name} has {spec.n} segments), got [{first}, {last}]"
                )
            c.segments = [first, last]
            if cls.int8_only and not _chain_full_integer(spec, first, last):
                allowed = [n for n in catalog.chain_names() if _chain_full_integer(
                    catalog.chain_spec(n), 1, catalog.chain_spec(n).n)]
                raise ValueError(
                    f"chains.{name}: class {cls.name} runs only full-integer INT8 models; "
                    f"{name} is {spec.segments[first - 1].input['dtype']}. Allowed chains: "
                    f"{', '.join(allowed) or 'none'} (remove it: chains: {{{name}: null}})"
                )
            if c.latency_ms is None:
                if spec.base not in table:
                    raise ValueError(
                        f"chains.{name}.latency_ms: required (no simulator default for class "
                        f"{cls.name}, model {spec.base})"
                    )
                c.latency_ms = table[spec.base]
            if c.device_time is None:
                c.device_time = self.device_time

    def _resolve_class(self) -> classes.NodeClass:
        """The node's class: ``class`` as given, else its name when that is a class."""
        if self.node_class is None:
            if self.tier not in classes.CLASSES:
                raise ValueError(_class_required(self.tier))
            self.node_class = self.tier
        cls = classes.node_class(self.node_class)  # NodeClassError is a ValueError
        return cls

    def _check_batching(self, cls: classes.NodeClass, name: str, m: VisionModelConfig) -> None:
        assert m.batching is not None
        if not cls.batching:
            raise ValueError(
                f"models.{name}.batching: dynamic batching needs a class that batches "
                f"({', '.join(classes.batching_classes())}); node {self.tier} is class "
                f"{cls.name}; remove batching, or give the node one of those classes"
            )
        one = m.batching.batch_ms(1)
        if m.latency_ms is None:
            m.latency_ms = one  # the device time of a batch of one (predictors, /v1/models)
        elif abs(m.latency_ms - one) > 1e-9:
            raise ValueError(
                f"models.{name}.latency_ms: with batching the device time is batching.base_ms + "
                f"k × batching.per_item_ms (a batch of one: {one:g} ms), got {m.latency_ms:g}; "
                "leave latency_ms unset, or remove batching (batching: null)"
            )

    def _check_int8(self, cls: classes.NodeClass) -> None:
        """An INT8-only class refuses the models its manifest knows to be float (files the
        manifest does not list are checked when the tier loads them: :meth:`check_files`)."""
        from models.paths import models_dir

        known = classes.manifest_dtypes(models_dir())
        allowed = classes.int8_model_names(models_dir())
        for name, m in self.models.items():
            dtypes = known.get(str(m.file))
            if dtypes is not None and not classes.is_full_integer(dtypes):
                raise ValueError(
                    f"models.{name}: class {cls.name} runs only full-integer INT8 models; "
                    f"{m.file} is {dtypes[0]}. Allowed models: {', '.join(allowed) or 'none'} "
                    f"(remove it: models: {{{name}: null}})"
                )

    @property
    def served_models(self) -> list[str]:
        return [*self.models, *self.lm]

    @property
    def cls(self) -> classes.NodeClass:
        return classes.node_class(self.node_class)

    @property
    def batched_models(self) -> list[str]:
        return [name for name, m in self.models.items() if m.batching is not None]

    def check_files(self, models_dir: Path) -> None:
        """Refuse, on an INT8-only class, a model file that is not full-integer INT8 (read from
        the file itself: covers files the manifest does not list)."""
        if not self.cls.int8_only:
            return
        allowed = classes.int8_model_names(models_dir)
        for name, m in self.models.items():
            dtypes = classes.file_dtypes(models_dir / str(m.file))
            if not classes.is_full_integer(dtypes):
                raise TierConfigError(
                    f"models.{name}: class {self.node_class} runs only full-integer INT8 models; "
                    f"{m.file} has {dtypes[0]} input and {dtypes[1]} output. Allowed models: "
                    f"{', '.join(allowed) or 'none'}"
                )

    def model_bytes(self, models_dir: Path) -> dict[str, int]:
        """Size of each served LiteRT file, and of each chain's held segment files together
        (raises TierConfigError naming a missing file)."""
        sizes = {}
        for name, m in self.models.items():
            path = models_dir / str(m.file)
            if not path.is_file():
                raise TierConfigError(
                    f"models.{name}.file: {path.name} not found in the models directory "
                    f"({models_dir}); set EDGEBED_MODELS_DIR or fix the file name"
                )
            sizes[name] = path.stat().st_size
        for name in self.chains:
            sizes[name] = sum(path.stat().st_size for path in self.chain_files(name, models_dir))
        return sizes

    def chain_spec(self, name: str, models_dir: Path) -> catalog.ChainSpec:
        """The manifest's description of the served chain ``name`` (from ``models_dir``)."""
        try:
            return catalog.chain_spec(name, Path(models_dir) / "manifest.json")
        except (OSError, ValueError) as exc:
            raise TierConfigError(f"chains.{name}: {exc}") from None

    def chain_files(self, name: str, models_dir: Path) -> list[Path]:
        """The segment files the node holds of chain ``name`` (TierConfigError if missing)."""
        spec = self.chain_spec(name, models_dir)
        paths = [Path(models_dir) / spec.segments[k - 1].file for k in self.chains[name].held]
        for path in paths:
            if not path.is_file():
                raise TierConfigError(
                    f"chains.{name}: segment file {path.name} not found in the models directory "
                    f"({models_dir}); set EDGEBED_MODELS_DIR"
                )
        return paths

    def check_memory(self, models_dir: Path) -> dict[str, int]:
        """Refuse a tier whose models and held chain segments (one copy per concurrent worker)
        exceed ``memory_bytes``."""
        sizes = self.model_bytes(models_dir)
        need = sum(sizes.values()) * self.concurrency
        if need > self.memory_bytes:
            detail = ", ".join(f"{self._memory_label(n)} {b:,} B" for n, b in sizes.items())
            too_big = [n for n, b in sizes.items() if b * self.concurrency > self.memory_bytes]
            which = f"; {', '.join(too_big)} alone does not fit" if too_big else ""
            raise TierConfigError(
                f"memory_bytes: tier {self.tier} cannot hold its models: they need {need:,} bytes "
                f"({detail}; × concurrency {self.concurrency}) but memory_bytes is "
                f"{self.memory_bytes:,}{which}. Remove a model or raise memory_bytes."
            )
        return sizes

    def _memory_label(self, name: str) -> str:
        if name in self.chains:
            first, last = self.chains[name].segments or (0, 0)
            return f"{name} (segments {first}..{last})"
        return name


def _chain_full_integer(spec: catalog.ChainSpec, first: int, last: int) -> bool:
    """Every tensor of segments ``first``..``last`` (inputs, features, exits) is int8/uint8."""
    return all(
        classes.is_full_integer((seg.input["dtype"], out["dtype"]))
        for seg in spec.segments[first - 1 : last]
        for out in (seg.features, seg.probabilities)
        if out is not None
    )


def builtin_config_path(tier: str) -> Path:
    """The built-in config of a node named like a class: that class's defaults file."""
    return SERVICES_DIR / tier / classes.DEFAULTS_FILE


def builtin_tiers() -> list[str]:
    return classes.class_names()


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; an override value of ``None`` removes the key (e.g. a model)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise TierConfigError(f"config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise TierConfigError(f"config file {path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise TierConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def env_overrides() -> dict[str, Any]:
    """``EDGEBED_TIER_*`` variables as a config mapping (``EDGEBED_TIER_CLASS`` is ``class``)."""
    source = EnvSettingsSource(TierConfig, env_prefix=ENV_PREFIX, env_nested_delimiter="__")
    # pydantic-settings reads an aliased field from the bare alias (``CLASS``), not prefixed
    out = {k: v for k, v in source().items() if k not in ("class", "node_class")}
    for key, value in os.environ.items():
        if key.upper() == f"{ENV_PREFIX}CLASS" and value:
            out["class"] = value
    return out


_ALLOWED_KEYS = re.compile(r"(allowed keys: [^;]*)")


def format_validation_error(exc: ValidationError) -> str:
    """One ``key.path: message`` per problem (``common.validation``: ranges and allowed values)."""
    lines = problems(exc, TierConfig)
    # the allowed keys are the config's spelling: ``class``, not the attribute ``node_class``
    return "; ".join(
        _ALLOWED_KEYS.sub(lambda m: re.sub(r"\bnode_class\b", "class", m.group(1)), line)
        .removeprefix("(top level): ")  # the config's own checks name their key themselves
        for line in lines
    )


def build_tier_config(data: dict[str, Any]) -> TierConfig:
    """Validate a config mapping, raising TierConfigError with key-level messages."""
    try:
        return TierConfig(**data)
    except ValidationError as exc:
        raise TierConfigError(f"invalid tier config: {format_validation_error(exc)}") from None


def resolve_class(name: str, *candidates: Any) -> str:
    """A node's class: the first of ``candidates`` given (CLI, overrides, environment, file),
    else its name when that is a class. Raises TierConfigError naming ``class`` otherwise."""
    for value in candidates:
        if value is not None:
            try:
                return classes.node_class(value).name
            except classes.NodeClassError as exc:
                raise TierConfigError(str(exc)) from None
    if name in classes.CLASSES:
        return name
    raise TierConfigError(_class_required(name))


def node_config_data(name: str, section: dict[str, Any]) -> dict[str, Any]:
    """A node's config mapping: its class defaults with ``section`` layered on top, ``tier`` set
    to ``name``. The class is ``section['class']``, else ``name`` when that is a class; without
    one (or with an unknown one) the section is returned as is, for validation to name ``class``."""
    value = section.get("class")
    if value is None and name in classes.CLASSES:
        value = name
    try:
        base = classes.class_defaults(value) if value is not None else {}
    except classes.NodeClassError:
        base = {}
    merged = deep_merge(base, section)
    merged["tier"] = name
    if value is not None:
        merged["class"] = value
    return merged


def load_tier_config(
    tier: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    use_env: bool = True,
    node_class: str | None = None,
    config_data: dict[str, Any] | None = None,
) -> TierConfig:
    """Class defaults ← user file ← environment ← overrides, validated. ``tier`` is the node's
    name; ``node_class`` (``--class``) its class, which may also come from the overrides, the
    environment or the file, and defaults to the name when the name is a class.
    ``config_data`` is the user layer given as a mapping instead of a file (an experiment's
    ``tiers.<name>`` section: ``edgebed serve --experiment``)."""
    if config_file and config_data is not None:
        raise TierConfigError("give the node's config as a file or as data, not both")
    user = read_yaml(Path(config_file)) if config_file else copy.deepcopy(config_data or {})
    env = env_overrides() if use_env else {}
    overrides = overrides or {}
    name = tier or user.get("tier") or overrides.get("tier")
    if not name:
        raise TierConfigError(
            "tier: required (--tier NAME, or 'tier:' in the config file)"
        )
    name = str(name)
    cls = resolve_class(
        name, node_class, overrides.get("class"), env.get("class"), user.get("class")
    )
    try:
        data = classes.class_defaults(cls)
    except classes.NodeClassError as exc:
        raise TierConfigError(str(exc)) from None
    data = deep_merge(data, user)
    data = deep_merge(data, env)
    data = deep_merge(data, overrides)
    data["tier"] = name
    data["class"] = cls
    return build_tier_config(data)
