"""Per-model training defaults vs a learning-rate sweep vs a plain torchvision-style script, same budget.

    python bench/lr_defaults.py --device cuda            # full: 8 000 images, CIFAR stem, 5 epochs: ~6 min on one GPU
    python bench/lr_defaults.py --quick                  # CPU smoke run: fewer images and epochs, ImageNet stem
    python bench/lr_defaults.py --write-images /tmp/jdigits   # also write the data set as an ImageFolder tree

The data set is generated, not downloaded: scikit-learn's 1 797 handwritten 8×8 digits, each
drawn many times with a random affine jitter (rotation, scale, shear, shift), random contrast,
stroke blur and pixel noise at 28 px, then resized to the input size as RGB. Train and held-out
images come from disjoint source digits, so the held-out score measures generalisation to
new writers, not to new jitters of known images.

Every model trains with SGD + Nesterov (momentum 0.9) and per-step warm-up + cosine, as the
pipeline does, in three ways: (1) the model's registered defaults only
(``qat.models.training_defaults``: learning rate scaled to the batch size, warm-up, weight
decay, label smoothing, BN momentum), (2) the same with each learning rate of ``--lrs``, and
(3) torchvision's reference-script recipe (plain SGD momentum 0.9, lr 0.1, one-cycle with 15 %
warm-up, label smoothing 0.1, weight decay 1e-4). It prints top-1 per run and a summary table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qat.models import create_model
from qat.models.registry import training_defaults
from qat.pipeline.optim import warmup_cosine

MODELS = ["mobilenet_v2", "mobilenet_v3_small", "henet_tinym", "ghostnet_x1_0", "efficientnet_b0"]
SWEEP = [0.0125, 0.025, 0.05, 0.1]  # at batch 128, scaled linearly like the defaults


def jittered_digits(n: int, size: int, sources: np.ndarray, labels: np.ndarray, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` images ``[n, 3, size, size]`` in [-1, 1]: random source digits under random jitter and noise."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(sources), (n,), generator=gen)
    src = torch.from_numpy(sources).float()[pick].unsqueeze(1) / 16.0  # [n, 1, 8, 8] in [0, 1]
    src = F.interpolate(src, size=(28, 28), mode="bilinear", align_corners=False)
    angle = (torch.rand(n, generator=gen) - 0.5) * math.radians(30)
    scale = 0.85 + 0.3 * torch.rand(n, generator=gen)
    shear = (torch.rand(n, generator=gen) - 0.5) * 0.4
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.3
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [n, 1, 28, 28], align_corners=False)
    img = F.grid_sample(src, grid, align_corners=False, padding_mode="zeros")
    blur = torch.rand(n, generator=gen) < 0.5
    img[blur] = F.avg_pool2d(img[blur], 3, stride=1, padding=1)
    contrast = 0.5 + 0.5 * torch.rand(n, 1, 1, 1, generator=gen)
    background = 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
    img = background + contrast * img + 0.08 * torch.randn(img.shape, generator=gen)
    img = F.interpolate(img.clamp(0, 1), size=(size, size), mode="bilinear", align_corners=False)
    return (img * 2 - 1).expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(labels)[pick].long()


def make_data(train: int, test: int, size: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train and held-out sets drawn from disjoint halves (stratified) of scikit-learn's digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    a, b = train_test_split(np.arange(len(digits.target)), test_size=0.3, random_state=seed, stratify=digits.target)
    x_train, y_train = jittered_digits(train, size, digits.images[a], digits.target[a], seed + 1)
    x_test, y_test = jittered_digits(test, size, digits.images[b], digits.target[b], seed + 2)
    return x_train, y_train, x_test, y_test


def write_image_folder(root: Path, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> None:
    """The data set as ``root/{train,test}/<digit>/<i>.png`` (grayscale PNG), for ``data=imagefolder``."""
    from PIL import Image

    for split, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            folder = root / split / str(int(y))
            folder.mkdir(parents=True, exist_ok=True)
            pixels = ((x[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels, mode="L").save(folder / f"{i:05d}.png")


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def train_eval(
    name: str,
    recipe: str,
    lr: float,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    args: argparse.Namespace,
) -> dict[str, float]:
    """Train ``name`` from scratch with ``recipe`` ("defaults" | "sweep" | "torchvision") and return held-out top-1."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = create_model(name, num_classes=10, stem=args.stem).to(device)
    defaults = training_defaults(name, args.size)
    steps_per_epoch = len(y_train) // args.batch
    total = steps_per_epoch * args.epochs
    if recipe == "torchvision":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
        smoothing = 0.1
    else:
        set_bn_momentum(model, defaults.bn_momentum)
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=defaults.weight_decay
        )
        sched = warmup_cosine(opt, total, defaults.warmup_fraction)
        smoothing = defaults.label_smoothing
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    losses = []
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(y_train), generator=gen)
        for step in range(steps_per_epoch):
            idx = order[step * args.batch : (step + 1) * args.batch]
            x, y = x_train[idx].to(device, non_blocking=True), y_train[idx].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 10 == 0 or step == steps_per_epoch - 1:
                losses.append(float(loss.detach()))
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y_test), 512):
            x, y = x_test[i : i + 512].to(device), y_test[i : i + 512].to(device)
            correct += int((model(x).argmax(1) == y).sum())
    top1 = 100.0 * correct / len(y_test)
    finite = math.isfinite(losses[-1]) if losses else False
    return {
        "top1": top1 if finite else 0.0,
        "max_loss": max(losses) if losses else 0.0,
        "s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--quick", action="store_true", help="CPU smoke run: 2 400 images, 4 epochs, batch 64, ImageNet stem"
    )
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--lrs", nargs="+", type=float, default=SWEEP, help="sweep learning rates at batch 128")
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--write-images", type=Path, default=None, help="write the data set as an ImageFolder tree")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.epochs, args.stem, args.batch = 2400, 500, 4, "imagenet", 64
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.device.startswith("cuda")
    data = make_data(args.train, args.test, args.size, args.seed)
    if args.write_images:
        write_image_folder(args.write_images, *data)
    print(
        f"data: {args.train} train / {args.test} held-out jittered digits at {args.size} px; stem={args.stem}, "
        f"batch {args.batch}, {args.epochs} epochs, device {args.device}, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    results: dict[str, dict[str, dict[str, float]]] = {}
    scale = args.batch / 128
    for name in args.models:
        d = training_defaults(name, args.size)
        runs = {"defaults": ("defaults", d.scaled_lr(args.batch))}
        runs.update({f"lr {lr:g}": ("sweep", lr * scale) for lr in args.lrs})
        runs["torchvision"] = ("torchvision", 0.1)
        results[name] = {}
        for label, (recipe, lr) in runs.items():
            r = train_eval(name, recipe, lr, data, args)
            r["lr"] = lr
            results[name][label] = r
            if args.json:  # after every run, so an interrupted benchmark keeps what it measured
                args.json.write_text(json.dumps({"args": vars(args), "results": results}, indent=1, default=str))
            print(
                f"{name:20s} {label:12s} lr {lr:.4g}  top-1 {r['top1']:6.2f} %  max loss {r['max_loss']:.2f}  {r['s']:.0f} s",
                flush=True,
            )
    print()
    sweep_labels = [f"lr {lr:g}" for lr in args.lrs]
    print(
        f"| model | defaults (lr at batch {args.batch}) | "
        + " | ".join(sweep_labels)
        + " | best sweep | torchvision-style | defaults − best | defaults − tv |"
    )
    print("|---|---|" + "---|" * (len(sweep_labels) + 4))
    for name, runs in results.items():
        best = max(runs[s]["top1"] for s in sweep_labels)
        dflt, tv = runs["defaults"]["top1"], runs["torchvision"]["top1"]
        cells = " | ".join(f"{runs[s]['top1']:.1f}" for s in sweep_labels)
        print(
            f"| {name} | {dflt:.1f} ({runs['defaults']['lr']:.3g}) | {cells} | {best:.1f} | {tv:.1f} | "
            f"{dflt - best:+.1f} | {dflt - tv:+.1f} |"
        )


if __name__ == "__main__":
    main()
