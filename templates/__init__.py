"""cbnet-tl templates."""
