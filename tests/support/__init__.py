"""Shared test helpers: real brokers, real models, real processes."""
