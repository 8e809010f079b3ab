"""Seconds per training step of the predictor on this CPU, and what a full run would take.

    python benchmarks/bench_train.py [--threads 2] [--steps 8] [--set data.batch_size=16 ...]

Builds the data module and the Lightning module from ``configs/default.yaml`` (overrides with
``--set`` as in ``train/train.py``) on the embedded data set, then times forward, backward and
optimizer step on real training batches (dynamic padding), and one validation pass. Prints
seconds per step, padded tokens per batch, and the implied seconds per epoch and per
``trainer.max_epochs`` run at this data set's size: the figure that decides whether the
README's main job fits in 15 minutes.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8, help="timed steps (after one warm-up)")
    args = ap.parse_args()
    import torch

    from clear_learn.training.recipe import build_modules, load_config

    cfg = load_config(args.config, args.set)
    cfg["threads"] = args.threads
    dm, module = build_modules(cfg)
    dm.setup("fit")
    module.log = lambda *a, **k: None  # no trainer attached
    opt = module.configure_optimizers()
    loader = dm.train_dataloader()
    batches = []
    while len(batches) < args.steps + 1:
        batches.extend(loader)
    batches = batches[: args.steps + 1]

    def step(batch) -> None:
        opt.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up
    t = time.perf_counter()
    for b in batches[1:]:
        step(b)
    per_step = (time.perf_counter() - t) / args.steps
    padded = sum(b["input_ids"].numel() for b in batches[1:]) / args.steps
    module.model.train(False)
    t = time.perf_counter()
    with torch.no_grad():
        for b in dm.val_dataloader():
            module.validation_step(b, 0)
    val_s = time.perf_counter() - t
    n_train = len(dm.splits["train"])
    bs = int(cfg["data"]["batch_size"])
    steps_per_epoch = -(-n_train // bs)
    epoch_s = steps_per_epoch * per_step + val_s
    epochs = int(cfg["trainer"].get("max_epochs", 30))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.threads} threads, batch {bs}, max_length {cfg['data']['max_length']}, "
          f"LoRA r {cfg['model'].get('lora_r')}: {per_step:.2f} s/step "
          f"({padded / bs:.0f} padded tokens per text)")
    print(f"validation pass ({len(dm.splits['val'])} queries): {val_s:.2f} s")
    print(f"data: {n_train} training queries -> {steps_per_epoch} steps/epoch, "
          f"{epoch_s:.0f} s/epoch, {epochs} epochs at most: {epochs * epoch_s / 60:.1f} min")
    print(f"peak resident memory: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
