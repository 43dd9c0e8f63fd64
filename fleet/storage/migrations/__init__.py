"""Alembic migrations of the fleet database; ``fleet.storage.migrate`` runs them at start."""
