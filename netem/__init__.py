"""Emulated links: link specs, tc netem and userspace proxy backends, fidelity probe."""
