"""MQTT ingestion: decode device messages (pure) and store them from a writer thread."""
