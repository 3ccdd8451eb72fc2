"""Pretraining speed: MLVICX step vs plain VICReg step, the step's speed options, and the data loader with the
augmentation on the CPU or on the device, in one run.

    python -m pipelines.benchmarks.pretrain_speed [--batch-size 32] [--image-size 128] [--device auto]
        [--amp auto] [--channels-last] [--num-workers 2] [--steps 8] [--data-dir runs/demo_data]
        [--amp-modes none,bf16] [--channels-last-modes off,on] [--compile-modes off,on] [--no-baseline]

e.g. on a GPU, the paper's setting: ``--image-size 224 --batch-size 256 --device cuda --num-workers 8``.

Prints, for the same batch and image size on the same machine:
- samples/s and peak memory of one training step (forward, MLVICX loss, backward, LARS step) of MLVICX and of
  plain VICReg (ResNet18, no context blocks, no multi-level term), and their cost ratio (``--amp``,
  ``--channels-last``; skipped with ``--no-baseline``);
- samples/s of the MLVICX step for every combination of ``--amp-modes`` x ``--channels-last-modes`` x
  ``--compile-modes`` (``torch.compile`` time is excluded: it happens in the warm-up steps);
- samples/s of the training data loader (``--num-workers`` processes) with the augmentation in the workers
  (cached uint8 -> two views per sample, ``TwoViewAugmentd``) and on ``--device`` (the workers collate the uint8
  cache, ``BatchedTwoViewAugment`` makes the views of the batch), the device augmentation alone on a resident
  batch, and how many times what the fastest MLVICX step consumes each delivers;
- the projected wall time of the paper's run (300 epochs x 75,312 NIH training images) at the fastest MLVICX rate.

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
    forward = torch.compile(model) if args.compile else model
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
                out = forward(view1, view2)
        else:
            out = forward(view1, view2)
        loss = loss_fn(**out)["loss"]
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    warm_start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    warmup_s = time.perf_counter() - warm_start
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
        "channels_last": bool(args.channels_last),
        "compile": bool(args.compile),
        "warmup_s": warmup_s,
        "threads": torch.get_num_threads(),
        "step_s": elapsed / args.steps,
        "samples_per_s": args.batch_size * args.steps / elapsed,
        "peak_mib": peak,
        "memory": memory,
    }


def _measure_loader(args: argparse.Namespace, augment_on: str) -> dict:
    """Loader samples/s with the views made in the workers (``cpu``) or on ``--device`` from the uint8 batch."""
    import torch
    from monai.data import CacheDataset, DataLoader, Dataset
    from monai.transforms import Compose, SelectItemsd

    from mlvicx_monai.data.datalist import load_datalist
    from mlvicx_monai.data.demo import prepare_data
    from mlvicx_monai.data.readers import LoadCXRd
    from mlvicx_monai.engines import resolve_device
    from mlvicx_monai.transforms import BatchedTwoViewAugment, DequantizeUint8d, QuantizeUint8d, TwoViewAugmentd

    device = resolve_device(args.device)
    # the demo exactly as bundles/pretrain.json makes it (same data, reused if it is there)
    bundle = json.loads((Path(__file__).resolve().parents[2] / "bundles" / "pretrain.json").read_text())
    datalist = prepare_data(
        args.dataset, args.data_dir, layout="nih", n_images=bundle["demo_images"], seed=bundle["demo_seed"],
        raw_size=bundle["demo_raw_size"], cache_size=bundle["demo_cache_size"],
    )
    files = load_datalist(datalist, "train")
    cache = CacheDataset(files, Compose([LoadCXRd("image"), QuantizeUint8d("image")]), cache_rate=1.0,
                         num_workers=None, copy_cache=False, progress=False)
    options = dict(image_size=args.image_size, crop_mode=args.crop_mode)
    if augment_on == "cpu":
        transform = Compose([DequantizeUint8d("image"), TwoViewAugmentd("image", **options),
                             SelectItemsd(["view1", "view2"])])
        augment = None
    else:
        transform = SelectItemsd(["image"])
        augment = BatchedTwoViewAugment(seed=0, **options)
    loader = DataLoader(Dataset(cache, transform), batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
                        pin_memory=device.type == "cuda")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def consume(batch: dict) -> int:
        if augment is None:
            views = [batch[k].to(device, non_blocking=True) for k in ("view1", "view2")]
        else:
            views = augment(batch["image"].to(device, non_blocking=True))
        return views[0].shape[0]

    batches = 0
    for batch in loader:  # first pass: start workers, warm the device
        consume(batch)
        batches += 1
        if batches >= 2:
            break
    sync()
    wanted = max(args.loader_batches, 1)
    start, samples = time.perf_counter(), 0
    while samples < wanted * args.batch_size:
        for batch in loader:
            samples += consume(batch)
            if samples >= wanted * args.batch_size:
                break
    sync()
    elapsed = time.perf_counter() - start
    result = {"augment_on": augment_on, "images_cached": len(cache), "num_workers": args.num_workers,
              "samples_per_s": samples / elapsed, "device": str(device)}
    if augment is not None:  # the augmentation alone, on a batch already on the device
        images = next(iter(loader))["image"].to(device)
        augment(images)
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            augment(images)
        sync()
        result["augment_only_samples_per_s"] = args.steps * images.shape[0] / (time.perf_counter() - start)
    return result


def _modes(text: str, table: dict[str, object], name: str) -> list:
    values = []
    for item in text.split(","):
        if item.strip() not in table:
            raise SystemExit(f"--{name}: unknown mode {item!r}; choose from {sorted(table)}")
        values.append(table[item.strip()])
    return values


def _run_measure(method: str, passthrough: list[str], extra: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.benchmarks.pretrain_speed", *passthrough, *extra, "--_measure", method],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {method} {extra} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.benchmarks.pretrain_speed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--expander-dim", type=int, default=2048)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", help="auto (bf16 on a GPU that has it), none, bf16, fp16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (one measured step)")
    parser.add_argument("--crop-mode", default="bilinear", choices=("bilinear", "bicubic"))
    parser.add_argument("--amp-modes", default="none,bf16", help="step variants: comma list of none, bf16, fp16")
    parser.add_argument("--channels-last-modes", default="off,on", help="step variants: comma list of off, on")
    parser.add_argument("--compile-modes", default="off,on", help="step variants: comma list of off, on")
    parser.add_argument("--no-baseline", action="store_true", help="skip the MLVICX / VICReg comparison")
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

    # the variant flags are chosen per subprocess; everything else is passed through
    own = {"--amp", "--channels-last", "--compile", "--amp-modes", "--channels-last-modes", "--compile-modes"}
    raw = list(argv if argv is not None else sys.argv[1:])
    passthrough, i = [], 0
    while i < len(raw):
        key = raw[i].split("=")[0]
        if key in own:
            i += 1 if "=" in raw[i] or key in ("--channels-last", "--compile") else 2
            continue
        passthrough.append(raw[i])
        i += 1

    def flags(amp: str, channels_last: bool, compiled: bool) -> list[str]:
        return ["--amp", amp, *(["--channels-last"] if channels_last else []), *(["--compile"] if compiled else [])]

    try:
        results = {}
        if not args.no_baseline:
            # alternate the two models over several rounds and keep the median: on a shared machine the load drifts,
            # and measuring one model after the other would charge the drift to one of them
            rounds: dict[str, list[dict]] = {"vicreg": [], "mlvicx": []}
            for _ in range(args.rounds):
                for method in ("vicreg", "mlvicx"):
                    rounds[method].append(_run_measure(method, passthrough, flags(args.amp, args.channels_last, False)))
            for method, runs in rounds.items():
                median = sorted(runs, key=lambda r: r["samples_per_s"])[len(runs) // 2]
                results[method] = {**median, "all_samples_per_s": [round(r["samples_per_s"], 2) for r in runs]}
        variants = []
        for amp in _modes(args.amp_modes, {"none": "none", "bf16": "bf16", "fp16": "fp16"}, "amp-modes"):
            for cl in _modes(args.channels_last_modes, {"off": False, "on": True}, "channels-last-modes"):
                for compiled in _modes(args.compile_modes, {"off": False, "on": True}, "compile-modes"):
                    variants.append(_run_measure("mlvicx", passthrough, flags(amp, cl, compiled)))
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 1
    loaders = [_measure_loader(args, "cpu"), _measure_loader(args, "device")]

    first = (variants or list(results.values()))[0]
    print(f"device: {first['device']}  threads: {first['threads']}  batch {args.batch_size} x "
          f"{args.image_size}x{args.image_size}")
    fastest = max([*variants, *([results["mlvicx"]] if results else [])], key=lambda r: r["samples_per_s"])
    if results:
        vicreg, mlvicx = results["vicreg"], results["mlvicx"]
        print(f"  baseline (amp {mlvicx['amp']}, channels_last={args.channels_last}):")
        for r in (vicreg, mlvicx):
            print(f"  {r['method']:>7} step: {r['step_s'] * 1000:8.1f} ms  {r['samples_per_s']:8.1f} samples/s "
                  f"(median of {r['all_samples_per_s']})  peak memory {r['memory']}")
        ratio = vicreg["samples_per_s"] / mlvicx["samples_per_s"]
        print(f"  MLVICX / VICReg cost per step: {ratio:.2f}x (goal <= 1.3x)")
    if variants:
        print("  MLVICX step variants:")
        for r in variants:
            print(f"    amp {r['amp']:>8}  channels_last {'on ' if r['channels_last'] else 'off'}  compile "
                  f"{'on ' if r['compile'] else 'off'}: {r['step_s'] * 1000:8.1f} ms  {r['samples_per_s']:8.1f} "
                  f"samples/s  (warm-up {r['warmup_s']:.1f} s)  peak memory {r['memory']}")
    for loader in loaders:
        where = "in the workers" if loader["augment_on"] == "cpu" else f"on {loader['device']}"
        print(f"  data loader, views made {where} ({loader['num_workers']} workers, {loader['images_cached']} "
              f"cached images): {loader['samples_per_s']:.1f} samples/s = "
              f"{loader['samples_per_s'] / fastest['samples_per_s']:.1f}x what the fastest MLVICX step consumes "
              "(goal >= 3x)")
        if "augment_only_samples_per_s" in loader:
            print(f"    batched augmentation alone on {loader['device']}: "
                  f"{loader['augment_only_samples_per_s']:.1f} samples/s")
    hours = PAPER_SAMPLES / fastest["samples_per_s"] / 3600
    print(f"  paper run (300 epochs x 75,312 images) at the fastest MLVICX rate "
          f"({fastest['samples_per_s']:.1f} samples/s): {hours:.1f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
