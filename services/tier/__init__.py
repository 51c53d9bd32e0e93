"""Shared FastAPI tier server: one app factory, three tier configs."""
