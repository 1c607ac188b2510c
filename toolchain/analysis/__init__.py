"""What a build is worth: evaluation on held-out data, host timings (bench), fast-recipe sizes, per-layer int8 diagnosis (explain), charts and the report."""
