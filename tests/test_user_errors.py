"""Bad input through the real ``train.py`` and ``python -m qat.evaluate``: exit status 2, one message, no traceback.

Imports cost seconds per process, so the cases run in one driver subprocess that executes
``train.py`` as ``__main__`` (``runpy``) once per case, exactly as the command line does, and
collects each case's exit status and stderr; only ``qat.evaluate`` without the custom model's
module on the path needs its own process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_run import tiny_overrides
from torch import nn

from qat.pipeline.callbacks import NaNLossGuard
from qat.pipeline.config import CONF_DIR

REPO = CONF_DIR.parent
FAST = tiny_overrides({"quant": "float"})
TINY = [*FAST, "+model.width=8"]

_DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, runpy, sys, traceback
    results = {}
    for name, argv in json.loads(sys.argv[1]).items():
        err = io.StringIO()
        sys.argv = ["train.py", *argv]
        rc = 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                runpy.run_path("train.py", run_name="__main__")
            except SystemExit as exit_:
                rc = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:
                traceback.print_exc()
                rc = 1
        results[name] = {"rc": rc, "stderr": err.getvalue()}
    print("RESULTS" + json.dumps(results))
    """
)

CUSTOM_MODULE = """
from qat.models.tiny import TinyConvNet


class Net(TinyConvNet):
    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes=num_classes, stem="cifar", width=8)
"""


def _image_folder(root: Path, classes: tuple[str, ...], corrupt: bool) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    if corrupt:
        (root / "train" / classes[-1] / "broken.png").write_bytes(b"not an image")
    return root


def _cases(tmp: Path) -> dict[str, list[str]]:
    corrupt = _image_folder(tmp / "corrupt", ("a", "b"), corrupt=True)
    single = _image_folder(tmp / "single", ("a",), corrupt=False)
    other_model = tmp / "henet_state.pt"
    from qat.models import create_model

    torch.save(create_model("henet_tinym", num_classes=10).state_dict(), other_model)
    blocker = tmp / "a_file"
    blocker.write_text("")
    images = ["data=imagefolder", "data.num_workers=0", "data.batch_size=4"]
    cases = {
        "typo_key": [*TINY, "trainer.max_epoch=1"],
        "batch_size_0": [*TINY, "data.batch_size=0"],
        "batch_size_neg": [*TINY, "data.batch_size=-1"],
        "epochs_abc": [*TINY, "trainer.max_epochs=abc"],
        "num_classes_1": [*TINY, "data.num_classes=1"],
        "one_class_folder": [*TINY, *images, f"data.root={single}"],
        "corrupt_verify": [*TINY, *images, f"data.root={corrupt}", "data.num_classes=2", "data.verify=true"],
        "corrupt_training": [*TINY, *images, f"data.root={corrupt}", "data.num_classes=2"],
        "too_small": [*FAST, "model=henet_tinym", "data.image_size=7", "data.stem=imagenet"],
        "unimportable_model": [*FAST, "model._target_=no_such_module.Net"],
        "run_dir_under_file": [*TINY, f"hydra.run.dir={blocker}/run"],
        "other_model_ckpt": [*TINY, f"float_ckpt={other_model}"],
        "custom_model": [*FAST, "model._target_=my_user_net.Net", "quant=calib", "quant.calib_batches=8"],
    }
    if os.geteuid() != 0:  # root writes through any permission bits
        read_only = tmp / "read_only"
        read_only.mkdir()
        read_only.chmod(0o555)
        cases["read_only_run_dir"] = [*TINY, f"hydra.run.dir={read_only}/run"]
    for name, argv in cases.items():
        if not any(a.startswith("hydra.run.dir=") for a in argv):
            argv.append(f"hydra.run.dir={tmp / 'runs' / name}")
    return cases


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("user_errors")
    (tmp / "my_user_net.py").write_text(CUSTOM_MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")])}
    cases = _cases(tmp)
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(cases)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS")), None)
    assert line is not None, proc.stderr[-3000:]
    out = json.loads(line[len("RESULTS") :])
    out["_tmp"] = tmp
    return out


def _one_message(results: dict[str, Any], case: str, *expected: str) -> str:
    result = results[case]
    stderr = result["stderr"]
    assert result["rc"] == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    message = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(message) == 1, stderr[-2000:]
    for text in expected:
        assert text in message[0], message[0]
    return message[0]


def test_typo_in_key_names_the_right_key(results: dict[str, Any]) -> None:
    _one_message(results, "typo_key", "'trainer.max_epoch'", "Did you mean trainer.max_epochs?")


@pytest.mark.parametrize("case,value", [("batch_size_0", "0"), ("batch_size_neg", "-1")])
def test_batch_size_below_one(results: dict[str, Any], case: str, value: str) -> None:
    _one_message(results, case, f"data.batch_size={value} must be >= 1", "data.batch_size=1")


def test_non_integer_epochs(results: dict[str, Any]) -> None:
    _one_message(results, "epochs_abc", "trainer.max_epochs='abc' is not a whole number")


def test_fewer_than_two_classes(results: dict[str, Any]) -> None:
    _one_message(results, "num_classes_1", "data.num_classes=1", "at least 2 classes")
    _one_message(results, "one_class_folder", "1 class(es)", "at least 2", "add a folder")


def test_corrupt_image_is_named(results: dict[str, Any]) -> None:
    _one_message(results, "corrupt_verify", "1 of 17 images cannot be read", "broken.png")
    _one_message(results, "corrupt_training", "cannot read image", "broken.png", "data.verify=true")


def test_input_too_small_names_the_minimum(results: dict[str, Any]) -> None:
    message = _one_message(results, "too_small", "'henet_tinym' cannot take 7x7 inputs")
    smallest = int(re.search(r"smallest input it takes is (\d+)x\1", message).group(1))
    assert smallest > 7 and f"data.image_size={smallest}" in message
    from qat.models import create_model

    model = create_model("henet_tinym", num_classes=10, stem="imagenet").eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, smallest, smallest))
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 3, smallest - 1, smallest - 1))


def test_unimportable_model_class(results: dict[str, Any]) -> None:
    _one_message(results, "unimportable_model", "'no_such_module.Net' cannot be imported", "PYTHONPATH")


def test_unwritable_run_folder(results: dict[str, Any]) -> None:
    _one_message(results, "run_dir_under_file", "cannot write the run folder", "hydra.run.dir=")
    if "read_only_run_dir" in results:
        _one_message(results, "read_only_run_dir", "cannot write the run folder")


def test_state_dict_of_another_model_is_summarised(results: dict[str, Any]) -> None:
    message = _one_message(results, "other_model_ckpt", "does not fit model 'tiny_convnet'", "missing keys", "more")
    assert len(message) < 800, len(message)


def test_custom_model_is_reported_and_evaluate_names_the_missing_module(results: dict[str, Any]) -> None:
    custom = results["custom_model"]
    assert custom["rc"] == 0, custom["stderr"][-3000:]
    run_dir = results["_tmp"] / "runs" / "custom_model"
    report = json.loads((run_dir / "report.json").read_text())
    stages = json.loads((run_dir / "stages.json").read_text())
    assert report["model"] == "my_user_net.Net"
    assert stages["identity"]["name"] == "my_user_net.Net"
    # calibration asked for 8 batches; 96 images in batches of 32 are 3
    assert stages["stages"]["calib"]["batches"] == 3
    assert stages["stages"]["calib"]["configured_batches"] == 8
    # without the module on the path, re-evaluating the export is one message, not a traceback
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "qat.evaluate", str(run_dir)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "'my_user_net.Net' cannot be imported" in proc.stderr and "PYTHONPATH" in proc.stderr


def test_nan_advice_offers_bn_freezing_only_when_bn_is_tracked() -> None:
    folded = nn.Sequential(nn.Conv2d(3, 3, 1))
    tracked = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    assert "freeze_bn_epoch" not in NaNLossGuard("qat").advice(folded)
    assert "quant.freeze_bn_epoch=0" in NaNLossGuard("qat").advice(tracked)
    assert "optim.optimizer.lr" in NaNLossGuard("float").advice(tracked)
