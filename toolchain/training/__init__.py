"""Training every recipe (B-LeNet, the fast CBNet, the multi-exit network), the graphs exported for conversion, and the thresholds chosen on held-out images (exits, cbnet-fallback)."""
