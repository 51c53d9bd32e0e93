"""HTTP routers of the tier app, one module per concern."""
