"""What ``cbnet-tl bench --arm64`` runs inside the arm64 root, under qemu with the counting plugin.

    python arm64_probe.py BUNDLE IMAGES.npy pipeline NAME BATCH NUM_IMAGES
    python arm64_probe.py BUNDLE IMAGES.npy bare MODEL BATCH NUM_IMAGES [RESOLVER]

``pipeline``: the bundle's own runtime (BUNDLE/lib) classifies NUM_IMAGES images, BATCH at a time, through
pipeline NAME at the default configuration. ``bare``: one model's int8 file, nothing but ``set_tensor`` +
``invoke`` + ``get_tensor`` per call of BATCH inputs, on the kernels of op resolver RESOLVER ("default": the
built-in kernels with the default delegate, XNNPACK; "builtin": the built-in kernels alone). After the imports,
loading and one warm-up call (in which XNNPACK packs its weights), the same loop runs twice between marks the
counting plugin records (data/insncount.c): on the N images, then on 0. (count between the first two marks -
count between the last two) / N is the loop's instructions per image, with none of the start-up and its
run-to-run noise. Only the stdlib, numpy and the bundle's runtime are used; this file is copied into the root
(toolchain/arm64/cost.py) and is not imported by the toolchain.
"""

import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

MARK_OFFSET = 0x4D41524B  # lseek(-1, MARK_OFFSET, SEEK_SET): a mark for the plugin; fails with EBADF, does nothing


def mark() -> None:
    try:
        os.lseek(-1, MARK_OFFSET, os.SEEK_SET)
    except OSError:
        pass


def segment(run, images: np.ndarray, batch_size: int, num_images: int) -> None:
    """The counted loop, between two marks."""
    mark()
    for start in range(0, num_images, batch_size):
        run(images[start : start + batch_size])
    mark()


def _bare_call(bundle: Path, model: str, batch_size: int, resolver: str):
    """set_tensor + invoke + get_tensor of every output: one call of the model on ``batch_size`` inputs and nothing
    else, on the kernels of ``resolver``."""
    from cbnet_tl.runtime.interpreter import find_interpreter, resolver_arguments

    backend = find_interpreter()
    manifest = json.loads((bundle / "manifest.json").read_text())
    interpreter = backend.interpreter_class(model_path=str(bundle / manifest["models"][model]["int8"]["file"]),
                                            num_threads=1, **resolver_arguments(backend, resolver))
    detail = interpreter.get_input_details()[0]
    shape = [batch_size, *detail["shape"][1:]]
    interpreter.resize_tensor_input(detail["index"], shape)
    interpreter.allocate_tensors()
    sample = np.zeros(shape, detail["dtype"])
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
        run, package = _bare_call(bundle, name, batch_size, argv[6] if len(argv) > 6 else "default")
    run(images[:batch_size])
    segment(run, images, batch_size, num_images)
    segment(run, images, batch_size, 0)
    print(json.dumps({"interpreter": package, "interpreter_version": importlib.metadata.version(package),
                      "numpy": np.__version__, "python": platform.python_version(), "machine": platform.machine()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
