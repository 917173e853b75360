"""Bench: fine-tuning in bf16 vs fp32 on the same real images: speed and test metrics.

Run: .venv/bin/python bench/finetune_precision.py [--data ../shared/realsample]
     [--model resnet50] [--image-size 224] [--epochs 2] [--batch 8] [--rounds 1] [--boot 2000]

Issue #26.3: on a CPU that computes bf16 natively, fine-tuning under bf16 autocast should be
>= 1.7x as fast as fp32, and the two runs' test metrics should lie within each other's
intervals (the byte-for-byte repeat guarantee holds within one precision, not across them).

Each round trains the same seeded run twice through `featurestore.train.finetune` (as
`xray finetune --precision fp32|bf16 --weights none` would; no pretrained weights here), fp32
then bf16, on the same images, with the pixel cache off so both decode alike. Training speed is
the training images over the median epoch after the first (history.csv's `seconds`, which
includes the epoch's validation pass, in the same precision on both sides); the ratio is
bf16/fp32 per round. The test metrics and their patient-bootstrap
intervals come from `xray compare` on the two run folders (`compare_runs`), with its paired
DeLong test of the ROC-AUC difference. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import emit, environment

REALSAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "realsample"


def train_once(data: Path, out: Path, args: argparse.Namespace, precision: str) -> dict[str, Any]:
    """One fine-tune run in `precision`; its folder, epoch seconds and training images/s."""
    import torch

    from featurestore.runs import load_run
    from featurestore.train import TrainConfig
    from featurestore.train.finetune import finetune

    torch.manual_seed(0)
    config = TrainConfig(
        epochs=args.epochs, patience=args.epochs, batch_size=args.batch, device="cpu",
        precision=precision, seed=0,  # type: ignore[arg-type]
    )  # fmt: skip
    began = time.perf_counter()
    summary = finetune(
        data=data, model=args.model, weights="none", image_size=args.image_size,
        augment=False, workers=0, runs_dir=out / precision, config=config, pixel_cache_gb=0,
    )  # fmt: skip
    wall = time.perf_counter() - began
    run = load_run(summary.path)
    train_rows = sum(run.config["class_counts"]["train"].values())
    epoch_s = [float(s) for s in run.history["seconds"]]
    return {
        "path": str(run.path),
        "precision": run.config.get("resolved_precision", precision),
        "train_rows": train_rows,
        "epoch_seconds": [round(s, 2) for s in epoch_s],
        # The first epoch also warms up (allocations, oneDNN kernels): the later ones are the
        # steady state when there are any.
        "train_img_s": train_rows / statistics.median(epoch_s[1:] or epoch_s),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REALSAMPLE)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--boot", type=int, default=2000)
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"error: {args.data} is not a folder (pass --data, a Kermany layout)")

    import torch

    from featurestore.compare import compare_runs
    from featurestore.config import CompareConfig
    from featurestore.devices import resolve_precision

    native = resolve_precision("auto", torch.device("cpu"), cuda_auto="fp32")
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="xray-ftprec-") as tmp:
        for r in range(args.rounds):
            out = Path(tmp) / f"round{r}"
            pair = {p: train_once(args.data, out, args, p) for p in ("fp32", "bf16")}
            pair["speedup"] = pair["bf16"]["train_img_s"] / pair["fp32"]["train_img_s"]
            rounds.append(pair)
        last = rounds[-1]
        cmp = compare_runs(
            [Path(last["fp32"]["path"]), Path(last["bf16"]["path"])],
            CompareConfig(n_boot=args.boot),
        )
    decision = cmp.decisions[0].name
    metrics: dict[str, Any] = {}
    for metric in ("roc_auc", "accuracy", "sensitivity", "specificity"):
        side = {}
        for precision, row in zip(("fp32", "bf16"), cmp.rows, strict=True):
            iv = row.metrics[decision][metric]
            side[precision] = {"estimate": iv.estimate, "lo": iv.lo, "hi": iv.hi}
        a, b = side["fp32"], side["bf16"]
        side["each_within_the_other"] = bool(
            a["lo"] <= b["estimate"] <= a["hi"] and b["lo"] <= a["estimate"] <= b["hi"]
        )
        metrics[metric] = side
    delong = cmp.pairs[0].test("delong") if cmp.pairs else None
    speedups = [r["speedup"] for r in rounds]
    record = {
        "bench": "finetune_precision",
        "environment": environment(),
        "native_precision": native,
        "model": args.model,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch": args.batch,
        "data": str(args.data),
        "rounds": rounds,
        "speedup_bf16_over_fp32": {"median": statistics.median(speedups), "all": speedups},
        "target_speedup": 1.7,
        "test_metrics": metrics,
        "delong_p": None if delong is None else delong.p_value,
    }
    rows = []
    for i, r in enumerate(rounds):
        for p in ("fp32", "bf16"):
            epochs = " / ".join(map(str, r[p]["epoch_seconds"]))
            rows.append([f"round {i} {p}", f"{r[p]['train_img_s']:.2f}", f"epoch s {epochs}"])
        rows.append([f"round {i} bf16/fp32", f"{r['speedup']:.2f}x", "target >= 1.7x"])
    for metric, side in metrics.items():
        cells = [f"{side[p]['estimate']:.3f} [{side[p]['lo']:.3f}, {side[p]['hi']:.3f}]"
                 for p in ("fp32", "bf16")]  # fmt: skip
        within = "within each other" if side["each_within_the_other"] else "NOT within"
        rows.append([f"{metric} fp32 | bf16", " | ".join(cells), within])
    emit(
        f"fine-tune {args.model} {args.image_size}px, bf16 vs fp32 ({args.data.name})",
        ["measure", "value", "detail"],
        rows,
        record,
        notes=[
            f"native precision on this CPU: {native}; random-initialised weights (--weights none)",
            "training images/s: train images / the median epoch after the first (validation "
            "pass included in both precisions)",
        ],
    )


if __name__ == "__main__":
    main()
