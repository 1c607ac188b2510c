"""The Edge TPU side: a .tflite graph reader, the compiler's op rules, which ops map, and the Coral compile log."""
