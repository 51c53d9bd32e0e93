"""Scenario actions on the local stack: change, cut and heal links; kill, pause, resume and
restart tier processes; and put everything back as configured between policy passes.

Links are changed through the link proxy's control API with the stack's token; node actions
signal the tier's process group (SIGKILL, SIGSTOP, SIGCONT) or start it again with the same
command line (same port), waiting until it is ready. The state file is kept current, so
``edgebed down`` stops a restarted tier too.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx

from netem.auth import auth_headers, read_token_file
from orchestrator.experiment import Experiment, ScenarioEvent
from orchestrator.stack.procs import ProcessRecord, is_running, spawn, stop, wait_ready
from orchestrator.stack.state import StackState


class StackControlError(RuntimeError):
    """A scenario action could not be applied."""


def link_reset_body(exp: Experiment, name: str) -> dict[str, Any]:
    """The control-API body that puts link ``name`` back to its configured law (pure)."""
    spec = exp.links[name]
    return {"up": spec.up.model_dump(mode="json"), "down": spec.down.model_dump(mode="json")}


class LocalStackController:
    """:class:`orchestrator.scenario.StackController` for a stack started by ``edgebed up``."""

    def __init__(self, exp: Experiment, state: StackState, ready_timeout_s: float = 60.0) -> None:
        self.exp = exp
        self.state = state
        self.ready_timeout_s = ready_timeout_s
        self.control = state.link_control_urls.get("links")
        self.headers = auth_headers(read_token_file(state.link_token_file)
                                    if state.link_token_file else None)
        self.paused: set[str] = set()
        self.cut: set[str] = set()
        self.changed: set[str] = set()

    # --- links ---
    def _put_link(self, name: str, body: dict[str, Any]) -> None:
        if not self.control:
            raise StackControlError(f"link {name}: this stack runs no link proxy "
                                    f"(backend {self.state.link_backend})")
        try:
            r = httpx.put(f"{self.control}/v1/links/{name}", json=body, headers=self.headers,
                          timeout=10, trust_env=False)
        except httpx.HTTPError as exc:
            raise StackControlError(f"link {name}: control API unreachable: {exc}") from None
        if r.status_code != 200:
            raise StackControlError(f"link {name}: HTTP {r.status_code}: {r.text[:300]}")

    # --- nodes ---
    def _record(self, node: str) -> ProcessRecord:
        for rec in self.state.processes:
            if rec.kind == "tier" and rec.name == f"tier-{node}":
                return rec
        raise StackControlError(f"node {node}: no such tier process in this stack")

    def _signal(self, node: str, sig: signal.Signals) -> None:
        rec = self._record(node)
        if not is_running(rec):
            raise StackControlError(f"node {node}: not running (pid {rec.pid})")
        os.killpg(rec.pid, sig)

    def _restart(self, node: str) -> str:
        rec = self._record(node)
        note = "was not running"
        if is_running(rec):
            os.killpg(rec.pid, signal.SIGCONT)
            note = f"stopped pid {rec.pid} ({stop(rec)})"
        new = spawn(rec.name, rec.kind, rec.argv, Path(rec.log_path), url=rec.url,
                    ready_path=rec.ready_path)
        self.state.processes[self.state.processes.index(rec)] = new
        self.state.save()
        waited = wait_ready(new, self.ready_timeout_s)
        self.paused.discard(node)
        return f"{note}; started pid {new.pid}, ready in {waited:.1f} s"

    def apply(self, event: ScenarioEvent) -> str:
        if event.action == "link":
            assert event.link is not None and event.set is not None
            self._put_link(event.link, dict(event.set))
            self.changed.add(event.link)
            return f"link {event.link} set {event.set}"
        if event.action in ("link_down", "link_up"):
            assert event.link is not None
            down = event.action == "link_down"
            self._put_link(event.link, {"cut": down})
            (self.cut.add if down else self.cut.discard)(event.link)
            return f"link {event.link} {'cut' if down else 'healed'}"
        node = str(event.node)
        if event.action == "kill":
            self._signal(node, signal.SIGKILL)
            return f"node {node} killed (SIGKILL)"
        if event.action == "pause":
            self._signal(node, signal.SIGSTOP)
            self.paused.add(node)
            return f"node {node} paused (SIGSTOP)"
        if event.action == "resume":
            self._signal(node, signal.SIGCONT)
            self.paused.discard(node)
            return f"node {node} resumed (SIGCONT)"
        if event.action == "restart":
            return f"node {node} restarted: {self._restart(node)}"
        raise StackControlError(f"action {event.action} is not a stack action")

    def reset(self) -> list[str]:
        """Every node running and every link as configured; returns what had to be done."""
        notes = []
        for node in sorted(self.paused):
            try:
                self._signal(node, signal.SIGCONT)
                notes.append(f"resumed {node}")
            except (StackControlError, ProcessLookupError):
                pass
        self.paused.clear()
        for name in self.exp.tiers:
            if not is_running(self._record(name)):
                notes.append(f"restarted {name}: {self._restart(name)}")
        for link in sorted(self.changed | self.cut):
            body = link_reset_body(self.exp, link)
            if link in self.cut:
                body["cut"] = False
            self._put_link(link, body)
            notes.append(f"link {link} back to its configured law")
        self.changed.clear()
        self.cut.clear()
        return notes
