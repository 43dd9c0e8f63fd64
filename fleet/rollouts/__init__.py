"""Gated rollouts: waves of devices, health gates from telemetry, promote / halt / roll back."""
