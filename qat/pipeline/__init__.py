"""The training pipeline: float training → calibration → QAT → real int8, evaluated and reported.

Modules, one job each: ``config`` (Hydra config tree, override checks), ``plan`` (the quant
recipe), ``data`` (LightningDataModules), ``module`` (LightningModule), ``callbacks``,
``evaluation``, ``stages`` (the runner, :func:`qat.pipeline.stages.run_pipeline`), ``export``,
``benchmark``, ``report``, ``state``, ``checkpoints``, ``errors``. Nothing heavy is imported
here, so ``train.py --help`` stays fast.
"""
