"""Devices: the request sources of an experiment, one stream of requests each.

An experiment declares device groups (``devices:``; none declared: one device named
``device``). Every device gets its own seeds (``experiment.device_seeds``: the experiment's
own for the first device, so a one-device experiment replays exactly what it did before groups
existed), its own workload (its group's ``workload`` over the top level) and its own arrival
stream. Request ids are unique across devices (device after device, in the file's order), so
records stay one row per request and policy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from orchestrator.arrivals import make_schedule
from orchestrator.experiment import Experiment, device_seeds
from orchestrator.scenario import apply_rate_steps
from orchestrator.workload import EvalSet, Request, generate_workload


@dataclass
class DeviceStream:
    """One device's requests and, for an open-loop arrival process, their send offsets (s
    from the start of a pass); ``schedule`` None: closed loop (``serial``)."""

    device: str
    group: str
    index: int  # among all devices of the experiment
    requests: list[Request]
    schedule: np.ndarray | None


def build_streams(exp: Experiment, eval_set: EvalSet | None = None) -> list[DeviceStream]:
    """Every device's stream, in the file's order of groups and devices."""
    streams: list[DeviceStream] = []
    next_id = 0
    for group in exp.groups():
        for k, device in enumerate(group.device_ids()):
            index = group.first_index + k
            seeds = device_seeds(exp.seeds, index)
            requests = [
                dataclasses.replace(r, id=next_id + i, device=device, group=group.name)
                for i, r in enumerate(generate_workload(group.workload, seeds, eval_set))
            ]
            next_id += len(requests)
            schedule = apply_rate_steps(
                make_schedule(group.arrival.process, len(requests), seeds.arrivals,
                              group.arrival.params),
                exp.scenario)
            streams.append(DeviceStream(device, group.name, index, requests, schedule))
    return streams


def all_requests(streams: list[DeviceStream]) -> list[Request]:
    return [r for st in streams for r in st.requests]
