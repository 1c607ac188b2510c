"""cbnet-tl toolchain."""
