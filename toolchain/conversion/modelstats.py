"""MACs and parameters counted from a ``.tflite`` file's ops and constant tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbnet_tl.runtime.interpreter import find_interpreter


def count_macs_and_params(path: Path) -> tuple:
    """Multiply-accumulates per image and weight/bias parameters of one model (batch 1).

    Counts CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and TRANSPOSE_CONV; other ops (pooling,
    padding, reshape, activations) have no multiply-accumulates.
    """
    interpreter = find_interpreter().interpreter_class(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}

    def shape(index):
        return [int(d) for d in tensors[index]["shape"]] if index in tensors else []

    macs = 0
    param_tensors = set()
    for op in interpreter._get_ops_details():
        name, inputs, outputs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"):
            continue
        # Inputs: [data, weights, bias?]; TRANSPOSE_CONV: [output_shape, weights, data, bias?].
        data_index = inputs[2] if name == "TRANSPOSE_CONV" else inputs[0]
        weights = shape(inputs[1])
        param_tensors.update(i for i in inputs[1:] if i >= 0 and i != data_index)
        out = shape(outputs[0])
        out_positions = int(np.prod(out[:-1])) if out else 0
        if name in ("CONV_2D", "FULLY_CONNECTED"):
            macs += out_positions * int(np.prod(weights))  # [out_c, kh, kw, in_c] or [out, in]
        elif name == "DEPTHWISE_CONV_2D":
            macs += out_positions * int(np.prod(weights[1:]))  # [1, kh, kw, out_c]
        else:
            macs += int(np.prod(shape(data_index)[:-1])) * int(np.prod(weights))
    params = sum(int(np.prod(shape(i))) for i in param_tensors)
    return int(macs), int(params)
