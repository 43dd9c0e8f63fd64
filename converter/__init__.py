"""Keras model -> validated, quantized TFLite model in a signed bundle.

The public surface is ``converter.pipeline.convert(ConversionRequest) -> ConversionResult``
and the ``edgefleet keys`` / ``edgefleet convert`` commands (``converter.cli``). Importing this
package imports nothing heavy: TensorFlow only ever runs in the conversion worker subprocess
(``converter.worker``), the TFLite runtimes only in the validator subprocess
(``converter.validate``), because TensorFlow and tflite-runtime cannot share one process.
"""
