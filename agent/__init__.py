"""The edgefleet device agent: serves inference, installs model updates safely, reports telemetry.

Importing this package (or any module in it) does nothing and imports nothing heavy: never
TensorFlow (it breaks tflite-runtime in the same process), never an ASGI framework or SQLAlchemy.
"""
