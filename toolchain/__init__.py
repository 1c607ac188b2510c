"""cbnet-tl toolchain: everything that runs on the build host (TensorFlow allowed; the device gets ``runtime/``).

Folders by stage, each importing only from the floors below it (``tests/test_toolchain_layers.py`` holds this):

- floor 0, at this level: ``progress`` (bars), ``quiet`` (library logs), ``scoring`` (accuracy and agreement),
  ``targets`` (the boards a bundle is made for)
- floor 1: ``ingest/`` (IDX sets and image folders into arrays, the input spec's choices), ``edgetpu/`` (the
  ``.tflite`` graph reader, the Edge TPU op rules and mapping, the Coral compile log), ``arm64/`` (the arm64
  root, its jail, the instruction-count probe and its driver)
- floor 2: ``conversion/`` (int8 conversion, representative-set calibration, quantized-accuracy checks, MACs)
- floor 3: ``training/`` (Keras training of every recipe, the export graphs, exit and fallback thresholds),
  ``delivery/`` (the bundle and its deployment)
- floor 4: ``analysis/`` (evaluation, bench, sizes, explain, charts, the report)
- floor 5: ``simulation/`` (the DVFS simulators, workloads, traces and their reports)
- floor 6: ``build`` (the stages of ``cbnet-tl build`` in order)
- floor 7: ``cli/`` (the commands)
"""
