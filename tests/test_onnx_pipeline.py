"""The pipeline's ONNX export end to end: int8/model_int8.onnx, the report's ONNX Runtime figures,
``python -m qat.evaluate --onnx`` and its errors (tiny settings, as tests/test_pipeline.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import onnx
import pytest
from test_pipeline import FAST, QUANT_FAST

from qat import evaluate
from qat.export import read_metadata
from qat.pipeline.config import compose_config
from qat.pipeline.export import TORCHSCRIPT
from qat.pipeline.onnx_runtime import ONNX_FP32, ONNX_INT8
from qat.pipeline.stages import run_pipeline

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def calib_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("onnx_calib_run")
    return run_dir, run_pipeline(compose_config([*FAST, *QUANT_FAST, "quant=calib"]), run_dir)


def test_calib_run_writes_qdq_onnx_and_reports_it(calib_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, report = calib_run
    path = run_dir / "int8" / ONNX_INT8
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert (run_dir / "int8" / ONNX_FP32).is_file()
    meta = read_metadata(path)
    assert meta["target"] == report["quant"]["target"] and meta["input_size"] == [3, 16, 16]
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["qat_version"]
    rec = report["onnx"]
    int8_top1 = report["stages"]["int8"]["top1"]
    assert rec["metrics"]["samples"] == report["stages"]["int8"]["samples"]
    # one flipped prediction among the tiny split's images is all the bias rounding may cost here
    assert abs(rec["metrics"]["top1"] - int8_top1) <= 1 / rec["metrics"]["samples"] + 1e-6
    assert rec["agreement_with_int8"] >= 1 - 1 / rec["metrics"]["samples"] - 1e-6
    assert rec["latency_s"]["onnx_int8"] > 0 and rec["latency_s"]["onnx_fp32"] > 0
    assert json.loads((run_dir / "report.json").read_text())["onnx"]["metrics"] == rec["metrics"]
    assert "ONNX Runtime" in (run_dir / "report.md").read_text()


def test_evaluate_onnx_reproduces_report(calib_run: tuple[Path, dict[str, Any]], capsys) -> None:
    run_dir, report = calib_run
    assert evaluate.main([str(run_dir), "--onnx"]) == 0
    out = capsys.readouterr().out
    assert f"int8 top-1 {100 * report['onnx']['metrics']['top1']:.2f} %" in out
    assert "reproduces the run's recorded ONNX Runtime int8 top-1" in out


@pytest.mark.parametrize(("flag", "name"), [("--onnx", ONNX_INT8), ("--torchscript", TORCHSCRIPT)])
def test_evaluate_missing_or_corrupt_export_is_one_clean_error(
    calib_run: tuple[Path, dict[str, Any]], tmp_path: Path, capsys, flag: str, name: str
) -> None:
    run_dir, _ = calib_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "int8", copy / "int8")
    (copy / "int8" / name).unlink()
    assert evaluate.main([str(copy), flag]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "rerun the quant=calib/qat run" in err
    (copy / "int8" / name).write_bytes(b"not a model")
    assert evaluate.main([str(copy), flag]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "rerun the quant=calib/qat run" in err
