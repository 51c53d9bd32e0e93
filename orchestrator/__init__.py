"""Orchestrator: workloads, arrival processes, routing policies, replay, records and summaries."""
