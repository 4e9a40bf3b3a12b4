"""Bounds and rules on what a signed-in client sends: request limits, guarded routes, where experiments keep artifacts, write-once artifacts."""
