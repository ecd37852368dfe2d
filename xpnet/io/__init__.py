"""Files: training checkpoints (:mod:`.checkpoint`, read as untrusted input), safetensors
weights (:mod:`.weights`) and ONNX export (:mod:`.onnx`).

``save_weights`` / ``load_weights`` need nothing beyond NumPy. ``export_onnx`` needs the
``export`` extra (ndonnx, onnx, onnxruntime) and imports it only when called.
"""

from .onnx import export_onnx
from .weights import WeightsError, load_weights, read_weights, save_weights

__all__ = ["WeightsError", "export_onnx", "load_weights", "read_weights", "save_weights"]
