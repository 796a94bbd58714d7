"""The run's int8 model in ONNX Runtime: ``int8/model_int8.onnx``, its accuracy, agreement and latency.

The int8 stage writes the QDQ file (:func:`qat.export.to_onnx`) and an fp32 ONNX baseline
(``model_fp32.onnx``, BN folded), evaluates the QDQ file in ONNX Runtime's CPU execution
provider on the held-out split, compares its predictions with qat's int8 model and times
both files at batch 1. ``python -m qat.evaluate <run> --onnx`` reruns the same evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qat.pipeline.benchmark import compare_latency
from qat.pipeline.errors import CheckpointError
from qat.pipeline.evaluation import EvalResult, evaluate_model, prediction_agreement

__all__ = [
    "ONNX_FP32",
    "ONNX_INT8",
    "OrtModel",
    "export_and_check_onnx",
    "load_ort_session",
    "recorded_onnx_metrics",
]

ONNX_INT8 = "model_int8.onnx"
ONNX_FP32 = "model_fp32.onnx"


def load_ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on ``path`` (all graph optimizations); clean errors for a missing
    or unreadable file."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no ONNX model at {path}: rerun the quant=calib/qat run (its int8 stage writes int8/{ONNX_INT8}), "
            "or export one with qat.export.to_onnx"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types for corrupt or invalid files
        raise CheckpointError(
            f"{path} is not a readable ONNX model ({str(e).splitlines()[0][:200]}); rerun the quant=calib/qat run "
            "that writes it, or export it again with qat.export.to_onnx"
        ) from e


def recorded_onnx_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The ONNX Runtime int8 metrics a run recorded (``report.json``), or None."""
    report = run_dir / "report.json"
    if not report.is_file():
        return None
    try:
        rec = json.loads(report.read_text()).get("onnx")
    except json.JSONDecodeError:
        return None
    return rec.get("metrics") if isinstance(rec, dict) else None


class OrtModel(nn.Module):
    """An ONNX Runtime session called like a torch model (first output, as a float tensor)."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy())})[0]
        return torch.from_numpy(out)


def export_and_check_onnx(
    float_model: nn.Module,
    fake_quant: nn.Module,
    int8_result: EvalResult,
    data: Any,
    out_dir: Path,
    metadata: dict[str, Any],
    report_cfg: Any,
) -> dict[str, Any]:
    """Write both ONNX files, evaluate the int8 one in ONNX Runtime and time both at batch 1.

    ``report_cfg``: the run's ``report`` config (``latency_runs``, ``latency_warmup``,
    ``latency_rounds``, ``latency_threads``, ``latency_clock``), so ONNX Runtime is timed as the
    torch models are. Returns the record the report reads.
    """
    from qat.export import export_float_onnx, to_onnx
    from qat.pipeline.benchmark import fold_batchnorm

    example = data.example_input(1)
    int8_path = to_onnx(fake_quant, example, out_dir / ONNX_INT8, metadata=metadata)
    fp32_path = export_float_onnx(fold_batchnorm(float_model), example, out_dir / ONNX_FP32, metadata=metadata)
    threads = report_cfg.get("latency_threads")
    int8_ort = OrtModel(load_ort_session(int8_path, threads))
    result = evaluate_model(int8_ort, data.val_dataloader(), data.num_classes, progress=None)
    models = {"onnx_fp32": OrtModel(load_ort_session(fp32_path, threads)), "onnx_int8": int8_ort}
    runs, rounds = int(report_cfg.get("latency_runs")), int(report_cfg.get("latency_rounds"))
    clock = str(report_cfg.get("latency_clock", "wall"))
    timed: dict[str, Any] = compare_latency(
        models, example, runs, int(report_cfg.get("latency_warmup")), threads, rounds, clock
    )
    timed.update(runs=runs, rounds=rounds, threads=threads or torch.get_num_threads(), clock=clock)
    return {
        "int8": str(int8_path),
        "fp32": str(fp32_path),
        "metrics": result.metrics(),
        "agreement_with_int8": prediction_agreement(result.predictions, int8_result.predictions),
        "latency_s": timed,
    }
