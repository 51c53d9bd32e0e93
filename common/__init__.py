"""Small pieces every edgebed package uses (no imports from the other packages)."""
