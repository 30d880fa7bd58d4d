"""int8 copies of the diarizer and encoder graphs for CPU serving (ONNX Runtime dynamic quantisation).

The recipe, measured on this project's graphs (2-core CPU, ONNX Runtime 1.32, one steady-state step):
1. save the graph after ONNX Runtime's *basic* optimisation level (constant folding, redundant nodes removed:
   standard ONNX ops only), so that the quantiser sees the MatMuls ONNX Runtime would run;
2. `quantize_dynamic` of the MatMuls with a constant weight only, weights int8 per output channel, activations
   quantised on the fly (uint8) per call.
On the full-size random-init diarizer this ran 1.55x the fp32 step (per-tensor weights 1.36x; uint8 weights 1.06x);
quantising every supported op as is ran 0.81x (diarizer) / 1.07x (encoder): unfused quantise/dequantise pairs.

Kept in float, on purpose:
- Conv (depthwise/pointwise convolutions, the subsampling stack): ConvInteger ran slower than the float Conv
  (demo models: diarizer 0.94x, encoder 0.52x of fp32 with Conv quantised vs 1.11x / 1.04x without) and moved the
  outputs 3-4x more;
- MatMuls of two activations (attention scores and their weighted sum; `MatMulConstBOnly`): both sides would be
  quantised on every call; not tried;
- every other op (LayerNorm, softmax, sigmoid, the LSTM); `decoder_joint` gets no int8 copy: 9 M params at full
  size, called once per symbol and frame, its time is call overhead, not arithmetic.

Graphs over 2 GB (the full encoder) are read and written with external data (`model.onnx.data`); checked on a
synthetic 2.2 GB chain of MatMuls: 54 s, peak RSS 6.5 GB, a 0.55 GB int8 copy.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from export.onnx_export import DATA_FILE, MODEL_FILE, TWO_GB

OP_TYPES = ("MatMul",)
INT8_SUFFIX = "_int8"  # `<graph>_int8`: the int8 twin of each diarizer/encoder graph (mtasr.manifest.INT8_ROLES)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def to_int8(src_dir: Path, dst_dir: Path) -> Path:
    """int8 copy of the graph in `src_dir` into `dst_dir` (same tensors: float32 inputs and outputs), by the
    recipe above; weights in one `model.onnx.data` when the fp32 graph needed external data."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    large = _folder_bytes(src_dir) >= TWO_GB
    shutil.rmtree(dst_dir, ignore_errors=True)
    dst_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=dst_dir.parent, prefix=f".{dst_dir.name}-") as tmp:
        pre = Path(tmp) / MODEL_FILE
        # Step 1 is the library's pre-processing: ONNX Runtime at ORT_ENABLE_BASIC, then ONNX shape inference.
        # Its symbolic shape inference stops at the Sortformer's Range ops ("Incomplete symbolic shape
        # inference"); without it the same MatMuls are quantised.
        quant_pre_process(src_dir / MODEL_FILE, pre, skip_symbolic_shape=True, save_as_external_data=large,
                          all_tensors_to_one_file=True, external_data_location=MODEL_FILE + ".data")
        quantize_dynamic(pre, dst_dir / MODEL_FILE, op_types_to_quantize=list(OP_TYPES), per_channel=True,
                         weight_type=QuantType.QInt8, use_external_data_format=large,
                         extra_options={"MatMulConstBOnly": True})
    if large and not (dst_dir / DATA_FILE).is_file():
        raise RuntimeError(f"{dst_dir}: the quantiser wrote no {DATA_FILE}")
    return dst_dir / MODEL_FILE
