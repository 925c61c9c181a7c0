"""Small utilities shared by tools: reading videos, writing masks and overlays."""
