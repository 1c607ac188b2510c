"""Keras models to full-integer int8 .tflite, the representative-set sweep, the quantized-accuracy checks, and MAC counts."""
