"""Pretraining speed: MLVICX step vs plain VICReg step, and the data loader alone, in one run.

    python -m pipelines.benchmarks.pretrain_speed [--batch-size 32] [--image-size 128] [--device auto]
        [--amp auto] [--channels-last] [--num-workers 2] [--steps 10] [--data-dir runs/demo_data]

Prints, for the same batch and image size on the same machine:
- samples/s and peak memory of one training step (forward, MLVICX loss, backward, LARS step) of MLVICX and of
  plain VICReg (ResNet18, no context blocks, no multi-level term), and their cost ratio;
- samples/s of the training data loader alone (cached uint8 images -> two augmented views, ``--num-workers``
  processes), and how many times what the MLVICX step consumes it delivers;
- the projected wall time of the paper's run (300 epochs x 75,312 NIH training images) at the measured MLVICX rate.

Each model is measured in a fresh subprocess so that peak memory is its own: CUDA ``max_memory_allocated`` on a
GPU, peak resident set size (``ru_maxrss``) minus the process's resident size before the model was built on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PAPER_SAMPLES = 300 * 75_312


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measure_step(method: str, args: argparse.Namespace) -> dict:
    import torch

    from mlvicx_monai.engines import resolve_amp, resolve_device
    from mlvicx_monai.losses import MLVICXLoss
    from mlvicx_monai.networks import build_model
    from mlvicx_monai.optim import LARS, lars_param_groups

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_amp(args.amp, device)
    torch.manual_seed(0)
    before = _rss_mb()
    model = build_model(method, expander_dim=args.expander_dim, last_bn=False).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    loss_fn = MLVICXLoss(terms="both" if method == "mlvicx" else "global")
    optimizer = LARS(lars_param_groups(model, 1e-6), lr=0.05)
    shape = (args.batch_size, 1, args.image_size, args.image_size)
    view1 = torch.randn(shape, device=device).contiguous(memory_format=memory_format)
    view2 = torch.randn(shape, device=device).contiguous(memory_format=memory_format)
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if dtype is not None:
            with torch.autocast(device.type, dtype=dtype):
                out = model(view1, view2)
        else:
            out = model(view1, view2)
        loss = loss_fn(**out)["loss"]
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        memory = f"{peak:.0f} MiB (CUDA max allocated)"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
        memory = f"{peak:.0f} MiB (peak RSS above the {before:.0f} MiB before the model)"
    return {
        "method": method,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "amp": str(dtype).replace("torch.", "") if dtype is not None else "fp32",
        "threads": torch.get_num_threads(),
        "step_s": elapsed / args.steps,
        "samples_per_s": args.batch_size * args.steps / elapsed,
        "peak_mib": peak,
        "memory": memory,
    }


def _measure_loader(args: argparse.Namespace) -> dict:
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import Compose, SelectItemsd

    from mlvicx_monai.data.datalist import load_datalist
    from mlvicx_monai.data.demo import prepare_data
    from mlvicx_monai.data.readers import LoadCXRd
    from mlvicx_monai.transforms import DequantizeUint8d, QuantizeUint8d, TwoViewAugmentd

    # the demo exactly as bundles/pretrain.json makes it (same data, reused if it is there)
    bundle = json.loads((Path(__file__).resolve().parents[2] / "bundles" / "pretrain.json").read_text())
    datalist = prepare_data(
        args.dataset, args.data_dir, layout="nih", n_images=bundle["demo_images"], seed=bundle["seed"],
        raw_size=bundle["demo_raw_size"], cache_size=bundle["demo_cache_size"],
    )
    files = load_datalist(datalist, "train")
    transform = Compose([
        LoadCXRd("image"), QuantizeUint8d("image"), DequantizeUint8d("image"),
        TwoViewAugmentd("image", image_size=args.image_size), SelectItemsd(["view1", "view2"]),
    ])
    dataset = CacheDataset(files, transform, cache_rate=1.0, num_workers=None, copy_cache=False, progress=False)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.num_workers, persistent_workers=args.num_workers > 0)
    batches = 0
    for _ in loader:  # first pass: start workers
        batches += 1
        if batches >= 2:
            break
    wanted = max(args.loader_batches, 1)
    start, samples = time.perf_counter(), 0
    while samples < wanted * args.batch_size:
        for batch in loader:
            samples += batch["view1"].shape[0]
            if samples >= wanted * args.batch_size:
                break
    elapsed = time.perf_counter() - start
    return {"images_cached": len(dataset), "num_workers": args.num_workers, "samples_per_s": samples / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.benchmarks.pretrain_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--expander-dim", type=int, default=2048)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", help="auto (bf16 on a GPU that has it), none, bf16, fp16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements per model (median kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads of the step (0: torch's default)")
    parser.add_argument("--num-workers", type=int, default=2, help="data loader processes")
    parser.add_argument("--loader-batches", type=int, default=30)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--data-dir", default="runs/demo_data")
    parser.add_argument("--_measure", choices=("mlvicx", "vicreg"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._measure:
        print(json.dumps(_measure_step(args._measure, args)))
        return 0

    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    # alternate the two models over several rounds and keep the median: on a shared machine the load drifts,
    # and measuring one model after the other would charge the drift to one of them
    rounds: dict[str, list[dict]] = {"vicreg": [], "mlvicx": []}
    for _ in range(args.rounds):
        for method in ("vicreg", "mlvicx"):
            proc = subprocess.run(
                [sys.executable, "-m", "pipelines.benchmarks.pretrain_speed", *passthrough, "--_measure", method],
                capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
            )
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            rounds[method].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    results = {}
    for method, runs in rounds.items():
        median = sorted(runs, key=lambda r: r["samples_per_s"])[len(runs) // 2]
        results[method] = {**median, "all_samples_per_s": [round(r["samples_per_s"], 2) for r in runs]}
    loader = _measure_loader(args)

    vicreg, mlvicx = results["vicreg"], results["mlvicx"]
    print(f"device: {mlvicx['device']}  amp: {mlvicx['amp']}  threads: {mlvicx['threads']}  "
          f"batch {args.batch_size} x {args.image_size}x{args.image_size}, channels_last={args.channels_last}")
    for r in (vicreg, mlvicx):
        print(f"  {r['method']:>7} step: {r['step_s'] * 1000:8.1f} ms  {r['samples_per_s']:8.1f} samples/s (median of "
              f"{r['all_samples_per_s']})  peak memory {r['memory']}")
    ratio = vicreg["samples_per_s"] / mlvicx["samples_per_s"]
    print(f"  MLVICX / VICReg cost per step: {ratio:.2f}x (goal <= 1.3x)")
    print(f"  data loader alone ({loader['num_workers']} workers, {loader['images_cached']} cached images): "
          f"{loader['samples_per_s']:.1f} samples/s = {loader['samples_per_s'] / mlvicx['samples_per_s']:.1f}x "
          "what the MLVICX step consumes (goal >= 3x)")
    hours = PAPER_SAMPLES / mlvicx["samples_per_s"] / 3600
    print(f"  paper run (300 epochs x 75,312 images) at this MLVICX rate: {hours:.1f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
