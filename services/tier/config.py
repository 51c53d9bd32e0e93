"""A tier's configuration as one typed settings object, loaded from YAML + environment + overrides.

Precedence (lowest first): the built-in ``services/<tier>/tier.yaml``, a user YAML file
(``--config``), environment variables ``EDGEBED_TIER_<KEY>`` (nested keys joined with ``__``,
e.g. ``EDGEBED_TIER_MODELS__INT8__LATENCY_MS=30``), explicit overrides (CLI flags). Unset
device latencies, energy factor and LM token profiles default to the teaching simulator's table.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from services.tier import simulator

SERVICES_DIR = Path(__file__).resolve().parents[1]
ENV_PREFIX = "EDGEBED_TIER_"
DeviceTime = Literal["real", "profile"]
EnergyModelName = Literal["power", "simulator"]
OnDisconnect = Literal["finish", "abort"]


class TierConfigError(ValueError):
    """A tier configuration is invalid; the message names the key and the allowed range."""


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
    """Everything that makes one tier (MCU, EDGE, CLOUD, or your own) behave like its device."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)

    tier: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    device_time: DeviceTime = "profile"
    concurrency: int = Field(1, ge=1, le=256, description="requests in service at once")
    queue_limit: int = Field(16, ge=0, le=100_000, description="requests allowed to wait")
    memory_bytes: int = Field(ge=1, le=2**50, description="model memory budget")
    energy_model: EnergyModelName = "power"
    energy_factor: float | None = Field(None, ge=0, le=1e6)
    power: PowerModel
    models: dict[str, VisionModelConfig] = Field(default_factory=dict)
    lm: dict[str, LMConfig] = Field(default_factory=dict)
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

    @model_validator(mode="after")
    def _fill_defaults(self) -> TierConfig:
        table = simulator.MODEL_LATENCY_MS.get(self.tier, {})
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
            if m.latency_ms is None:
                if name not in table:
                    raise ValueError(
                        f"models.{name}.latency_ms: required (no simulator default for "
                        f"{self.tier}/{name})"
                    )
                m.latency_ms = table[name]
            if m.device_time is None:
                m.device_time = self.device_time
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
                if self.tier not in simulator.LM_EXTRA_MS:
                    raise ValueError(f"lm.{name}.ttft_ms/tpot_ms: required for tier {self.tier!r}")
                ttft_ms, tpot_ms = simulator.lm_token_profile(self.tier, name)
                lm.ttft_ms = ttft_ms if lm.ttft_ms is None else lm.ttft_ms
                lm.tpot_ms = tpot_ms if lm.tpot_ms is None else lm.tpot_ms
            quality = simulator.LM_QUALITY[name]
            lm.quality_short = quality["short"] if lm.quality_short is None else lm.quality_short
            lm.quality_long = quality["long"] if lm.quality_long is None else lm.quality_long
        if self.energy_factor is None:
            if self.tier not in simulator.ENERGY_FACTOR:
                raise ValueError(f"energy_factor: required for tier {self.tier!r}")
            self.energy_factor = simulator.ENERGY_FACTOR[self.tier]
        overlap = set(self.models) & set(self.lm)
        if overlap:
            raise ValueError(f"models/lm: a name cannot be both, got {sorted(overlap)}")
        return self

    @property
    def served_models(self) -> list[str]:
        return [*self.models, *self.lm]

    def model_bytes(self, models_dir: Path) -> dict[str, int]:
        """Size of each served LiteRT file (raises TierConfigError naming a missing file)."""
        sizes = {}
        for name, m in self.models.items():
            path = models_dir / str(m.file)
            if not path.is_file():
                raise TierConfigError(
                    f"models.{name}.file: {path.name} not found in the models directory "
                    f"({models_dir}); set EDGEBED_MODELS_DIR or fix the file name"
                )
            sizes[name] = path.stat().st_size
        return sizes

    def check_memory(self, models_dir: Path) -> dict[str, int]:
        """Refuse a tier whose models (one copy per concurrent worker) exceed ``memory_bytes``."""
        sizes = self.model_bytes(models_dir)
        need = sum(sizes.values()) * self.concurrency
        if need > self.memory_bytes:
            detail = ", ".join(f"{n} {b:,} B" for n, b in sizes.items())
            too_big = [n for n, b in sizes.items() if b * self.concurrency > self.memory_bytes]
            which = f"; {', '.join(too_big)} alone does not fit" if too_big else ""
            raise TierConfigError(
                f"memory_bytes: tier {self.tier} cannot hold its models: they need {need:,} bytes "
                f"({detail}; × concurrency {self.concurrency}) but memory_bytes is "
                f"{self.memory_bytes:,}{which}. Remove a model or raise memory_bytes."
            )
        return sizes


def builtin_config_path(tier: str) -> Path:
    return SERVICES_DIR / tier / "tier.yaml"


def builtin_tiers() -> list[str]:
    return sorted(p.parent.name for p in SERVICES_DIR.glob("*/tier.yaml"))


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
    source = EnvSettingsSource(TierConfig, env_prefix=ENV_PREFIX, env_nested_delimiter="__")
    return dict(source())


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        got = "" if isinstance(value, dict) or err["type"] == "value_error" else f", got {value!r}"
        lines.append(f"{loc}: {msg}{got}" if loc else f"{msg}{got}")
    return "; ".join(lines)


def build_tier_config(data: dict[str, Any]) -> TierConfig:
    """Validate a config mapping, raising TierConfigError with key-level messages."""
    try:
        return TierConfig(**data)
    except ValidationError as exc:
        raise TierConfigError(f"invalid tier config: {format_validation_error(exc)}") from None


def load_tier_config(
    tier: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    use_env: bool = True,
) -> TierConfig:
    """Built-in tier YAML ← user file ← environment ← overrides, validated."""
    user = read_yaml(Path(config_file)) if config_file else {}
    name = tier or user.get("tier") or (overrides or {}).get("tier")
    if not name:
        raise TierConfigError(
            "tier: required (--tier mcu|edge|cloud, or 'tier:' in the config file)"
        )
    data: dict[str, Any] = {}
    builtin = builtin_config_path(str(name))
    if builtin.is_file():
        data = read_yaml(builtin)
    elif not config_file:
        raise TierConfigError(
            f"tier: no built-in config for {name!r} (built-in: {', '.join(builtin_tiers())}); "
            "pass --config FILE"
        )
    data = deep_merge(data, user)
    if use_env:
        data = deep_merge(data, env_overrides())
    data = deep_merge(data, overrides or {})
    data["tier"] = str(name)
    return build_tier_config(data)
