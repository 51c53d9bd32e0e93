"""The local stack's state file: what ``edgebed up`` started (PIDs, ports, URLs) for ``down``.

The file is rewritten after every process start, so even an ``up`` that dies half-way leaves a
record that ``edgebed down`` can use to stop exactly what was started.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from orchestrator.stack.procs import ProcessRecord

STATE_FILE = "stack.json"
DEFAULT_STATE_DIR = ".edgebed"


def default_state_dir() -> Path:
    """``$EDGEBED_STATE_DIR`` or ``.edgebed`` under the working directory."""
    return Path(os.environ.get("EDGEBED_STATE_DIR", DEFAULT_STATE_DIR)).resolve()


class StackState(BaseModel):
    version: int = 1
    state_dir: str
    experiment_path: str | None = None
    started_unix: float = Field(default_factory=time.time)
    processes: list[ProcessRecord] = Field(default_factory=list)
    tier_urls: dict[str, str] = Field(default_factory=dict)  # tier name -> direct URL
    target_urls: dict[str, str] = Field(default_factory=dict)  # tier name -> URL through its link
    # device group -> node -> URL through that group's link or path
    group_target_urls: dict[str, dict[str, str]] = Field(default_factory=dict)
    link_backend: str = "none"
    link_backend_reason: str = ""
    link_control_urls: dict[str, str] = Field(default_factory=dict)
    link_token_file: str | None = None  # 0600 file with the token the link control API wants
    prometheus_url: str | None = None
    prometheus_note: str = ""
    scrape_interval_s: float = 5.0
    orchestrator_metrics_port: int | None = None

    def path(self) -> Path:
        return Path(self.state_dir) / STATE_FILE

    def save(self) -> None:
        p = self.path()
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.model_dump(), indent=2))
        tmp.replace(p)


class StateError(RuntimeError):
    """The state file exists but cannot be read."""


def load_state(state_dir: Path) -> StackState | None:
    """The recorded stack, None when there is none; :class:`StateError` naming the file and
    what to do when it is unreadable or corrupt."""
    p = Path(state_dir) / STATE_FILE
    if not p.exists():
        return None
    try:
        return StackState.model_validate_json(p.read_bytes())
    except (ValidationError, OSError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StateError(
            f"stack state file {p} is unreadable or corrupt ({first}); stop any processes it "
            f"listed by hand (see {Path(state_dir) / 'logs'}) and remove the file"
        ) from None


def remove_state(state_dir: Path) -> None:
    p = Path(state_dir) / STATE_FILE
    p.unlink(missing_ok=True)
