"""Keras recipes of the CBNet model family (needs TensorFlow/Keras; build hosts only)."""
