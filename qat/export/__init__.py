"""Deployment formats: standard QDQ ONNX (``to_onnx``) for ONNX Runtime, TensorRT, OpenVINO and NPU compilers."""

from qat.export.onnx import OnnxExportError, export_float_onnx, read_metadata, to_onnx

__all__ = ["OnnxExportError", "export_float_onnx", "read_metadata", "to_onnx"]
