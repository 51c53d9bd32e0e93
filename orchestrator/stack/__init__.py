"""The local stack: experiment files; starting/stopping tiers, links, Prometheus on loopback."""
