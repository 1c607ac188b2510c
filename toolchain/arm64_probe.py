"""What ``cbnet-tl bench --arm64`` runs inside the arm64 root, under qemu with the counting plugin.

    python arm64_probe.py BUNDLE IMAGES.npy pipeline NAME BATCH NUM_IMAGES
    python arm64_probe.py BUNDLE IMAGES.npy bare MODEL 1 NUM_IMAGES

``pipeline``: the bundle's own runtime (BUNDLE/lib) classifies NUM_IMAGES images, BATCH at a time, through
pipeline NAME at the default configuration. ``bare``: one model's int8 file, nothing but ``set_tensor`` +
``invoke`` + ``get_tensor`` per image. Everything before the loop (imports, loading, one warm-up call, in
which XNNPACK packs its weights) is the same whatever NUM_IMAGES is, so the count of a run with N images
minus the count of a run with 0 is the loop's alone. Only the stdlib, numpy and the bundle's runtime are
used; this file is copied into the root (toolchain/arm64_cost.py) and is not imported by the toolchain.
"""

import importlib.metadata
import json
import platform
import sys
from pathlib import Path

import numpy as np


def _bare_call(bundle: Path, model: str):
    """set_tensor + invoke + get_tensor of every output: one call of the model and nothing else."""
    from cbnet_tl.runtime.interpreter import find_interpreter

    backend = find_interpreter()
    manifest = json.loads((bundle / "manifest.json").read_text())
    interpreter = backend.interpreter_class(model_path=str(bundle / manifest["models"][model]["int8"]["file"]),
                                            num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    sample = np.zeros(detail["shape"], detail["dtype"])
    input_index = detail["index"]
    output_indices = [d["index"] for d in interpreter.get_output_details()]
    set_tensor, invoke, get_tensor = interpreter.set_tensor, interpreter.invoke, interpreter.get_tensor

    def call(_images):
        set_tensor(input_index, sample)
        invoke()
        for index in output_indices:
            get_tensor(index)

    return call, backend.package


def main(argv) -> int:
    bundle, images_path, kind, name = Path(argv[0]), argv[1], argv[2], argv[3]
    batch_size, num_images = int(argv[4]), int(argv[5])
    sys.path.insert(0, str(bundle / "lib"))
    images = np.load(images_path)
    if kind == "pipeline":
        from cbnet_tl.runtime.api import open_pipeline
        from cbnet_tl.runtime.interpreter import find_interpreter

        run, package = open_pipeline(bundle, name, tuning=None).classify, find_interpreter().package
    else:
        (run, package), batch_size = _bare_call(bundle, name), 1
    run(images[:batch_size])
    for start in range(0, num_images, batch_size):
        run(images[start : start + batch_size])
    print(json.dumps({"interpreter": package, "interpreter_version": importlib.metadata.version(package),
                      "numpy": np.__version__, "python": platform.python_version(), "machine": platform.machine()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
