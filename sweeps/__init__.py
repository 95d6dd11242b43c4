"""Sweep specs, planning, dispatch to Ray, progress and resume."""
