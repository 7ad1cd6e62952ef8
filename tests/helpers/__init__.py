"""Shared test helpers (real external programs such as coturn, run on loopback only)."""
