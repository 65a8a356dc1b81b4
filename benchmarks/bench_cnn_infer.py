"""Benchmark: CNN segmentation of a full 4x240x240x155 case, ours vs MONAI's plain sliding window.

Baseline ("plain"): the volume z-scored per channel over its non-zero voxels, then MONAI's
``sliding_window_inference`` over the whole uncropped volume (``sw_batch_size`` 1), sigmoid,
threshold 0.5, regions -> BraTS labels.
Ours: :meth:`GliomaCompareLib.cnn.inference.Segmenter.predict` — the same normalisation, crop
to the brain's bounding box, sliding window over the crop (ROI clipped to the crop; windows are
batched on CUDA only, so one per pass here), un-crop. Also "ours-contiguous" (the crop without
the channels_last_3d layout) and "ours-whole" (``crop: false``: the whole volume in the
channels_last_3d layout, the bundle's own inference).

Why the crop cannot reach Dice 0.99 against the plain pass: SegResNet normalises with
GroupNorm, whose statistics are taken over each window; a window of the brain alone has other
statistics than one that is two-thirds background, so borderline voxels flip (Dice 0.87-0.92
here; 0.89-0.94 per case, 0.92 on average, also for the demo's better-trained small SegResNet
on its 64x64x48 cases: ``--run demo_out``). Against the ground truth the crop scored better
here (WT 0.76 vs 0.71 at the bundle's ROI) and slightly worse on the demo's test patients (0.87
vs 0.88 on average). "ours-whole" gives the plain
pass's labels (the tests check the probabilities to 1e-5) at the layout's speed-up only
(1.4-1.7x: the convolutions, 76% of the time, are the same work).

Both use the same network and weights and the same ROI / overlap, in the same run. Every
measurement runs in its own subprocess (peak memory = that process's maximum resident set
size, ``VmHWM``; ``tracemalloc`` cannot see torch), methods alternate, and the fastest of ``--repeats``
is reported. Printed: seconds per case, peak memory, speed ratio (target >= 2x) and the Dice
between the two label maps per region (target >= 0.99).

Weights: ``--weights FILE`` (e.g. the ``brats_mri_segmentation`` bundle's ``models/model.pt``).
Without it the bundle's SegResNet is trained here first, briefly, on full-resolution synthetic
cases with ``train_segmenter`` (cached under ``$GLIOMACOMPARE_CACHE_DIR`` or
``~/.cache/gliomacompare``), because a random-initialised network's outputs sit at
P = 0.5 everywhere and no two inference layouts agree on them; the trained network's Dice
against the ground truth is printed so its quality is visible.

Run: ``.venv/bin/python benchmarks/bench_cnn_infer.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: plain: MONAI over the whole volume; ours: Segmenter.predict (brain crop, channels_last_3d);
#: ours-contiguous: the same without the channels_last_3d layout (the crop alone);
#: ours-whole: Segmenter.predict with ``crop: false`` (the whole volume, channels_last_3d).
METHODS = ("plain", "ours", "ours-contiguous", "ours-whole")

SETTINGS = {
    # name: (roi, overlap)
    "bundle": ((240, 240, 160), 0.5),  # the bundle's own inference.json
    "128": ((128, 128, 128), 0.25),
    "96": ((96, 96, 96), 0.25),
}


def _cache_dir() -> Path:
    base = os.environ.get("GLIOMACOMPARE_CACHE_DIR") or str(
        Path.home() / ".cache" / "gliomacompare"
    )
    return Path(base) / "bench_cnn_infer"


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MB, from ``/proc/self/status``.

    ``VmHWM`` belongs to the process's own address space, which starts afresh at ``exec``;
    ``getrusage``'s ``ru_maxrss`` does not (Linux carries it over from the forking parent).
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# worker: one measurement in a fresh process


def _worker(args) -> None:
    import torch

    from GliomaCompareLib.cnn.config import SegConfig
    from GliomaCompareLib.cnn.inference import Segmenter, load_segmenter
    from GliomaCompareLib.cnn.preprocess import normalize_channels
    from GliomaCompareLib.data.case import Case
    from GliomaCompareLib.data.conventions import load_convention
    from GliomaCompareLib.data.regions import labels_from_regions

    torch.set_num_threads(args.threads)
    conv = load_convention("brats2020")
    data = np.load(args.case)
    case = Case(
        case_id="bench",
        grade=None,
        image=data["image"],
        label=None,
        affine=data["affine"],
        spacing=(1.0, 1.0, 1.0),
        channels=conv.channels,
        convention=conv,
    )
    roi, overlap = SETTINGS[args.setting]
    base = load_segmenter(args.model, device="cpu") if Path(args.model).is_dir() else None
    config = replace(
        base.config if base else SegConfig(), roi_size=roi, overlap=overlap, blend_mode="constant"
    )
    network = base.network if base else None
    if network is None:
        segmenter = load_segmenter(args.model, config=config, device="cpu")
        network = segmenter.network
    network.eval()
    if args.method.startswith("ours"):
        layout = args.method != "ours-contiguous"  # the crop alone, default layout
        seg = Segmenter(
            network,
            replace(config, crop=args.method != "ours-whole"),
            model_id="bench",
            device="cpu",
            memory_format_channels_last=layout,
        )
    else:
        network = network.to(memory_format=torch.contiguous_format)  # MONAI's default
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    if args.method.startswith("ours"):
        label = seg.predict(case).label
    else:
        from monai.inferers import sliding_window_inference

        image = np.stack([case.modality(c) for c in config.channels])
        tensor = torch.from_numpy(normalize_channels(image))[None]
        with torch.inference_mode():
            logits = sliding_window_inference(tensor, roi, 1, network, overlap=overlap)
        masks = (torch.sigmoid(logits[0]) > config.threshold).numpy()
        by = {r: masks[i] for i, r in enumerate(config.regions)}
        label = labels_from_regions(by["WT"], by["TC"], by["ET"], conv)
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    np.save(args.out, label)
    print(json.dumps({"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak}))


# ---------------------------------------------------------------------------------------------
# parent


def _make_case(folder: Path, seed: int) -> tuple[Path, np.ndarray]:
    from GliomaCompareLib.data.synthetic import SynthConfig, generate_case

    config = SynthConfig(cases=1, seed=seed, shape=(240, 240, 155), hgg_fraction=1.0)
    case = generate_case(0, config)
    image = np.stack([case.volumes[c] for c in ("flair", "t1", "t1ce", "t2")]).astype(np.float32)
    path = folder / "case.npz"
    np.savez(path, image=image, affine=case.affine)
    return path, case.label


def _train_model(epochs: int, seed: int) -> Path:
    """The bundle's SegResNet trained briefly on full-resolution synthetic cases (cached)."""
    from GliomaCompareLib.cnn.checkpoint import load_model_info, load_training_state
    from GliomaCompareLib.cnn.config import SegConfig, TrainSettings
    from GliomaCompareLib.cnn.train import train_segmenter
    from GliomaCompareLib.data.discovery import discover_cases
    from GliomaCompareLib.data.splits import Splits
    from GliomaCompareLib.data.synthetic import SynthConfig, write_cohort

    folder = _cache_dir() / f"segresnet16-e{epochs}-s{seed}"
    model = folder / "model"
    # the last epoch's weights, not the "best": one validation case is too few to choose by
    last = model / "last.pt"
    try:
        info = load_model_info(model)
        done = last.is_file() and load_training_state(last)["epoch"] == epochs
        if info.metrics.get("epochs_planned") == epochs and done:
            return last
    except (FileNotFoundError, ValueError):
        pass
    data = write_cohort(
        folder / "data",
        SynthConfig(cases=4, seed=seed + 1, shape=(240, 240, 155), hgg_fraction=0.75),
    )
    cohort = discover_cases(data)
    ids = sorted(c.case_id for c in cohort.usable)
    splits = Splits(
        train=tuple(ids[:3]),
        val=tuple(ids[3:]),
        test=(),
        grades={c.case_id: c.grade for c in cohort.usable},
        seed=seed,
        fractions=(0.75, 0.25, 0.0),
    )
    config = SegConfig(
        patch_size=(96, 96, 96),
        roi_size=(128, 128, 128),
        overlap=0.25,
        samples_per_case=4,
        pos_fraction=0.6,
        train=TrainSettings(
            epochs=epochs, batch_size=2, learning_rate=2e-3, seed=seed, cache="disk"
        ),
    )
    print(
        f"training the bench network ({epochs} epochs of 3 full-size cases x 4 patches of 96^3; cached in {folder}) ...",
        flush=True,
    )
    train_segmenter(cohort, model, splits, config, device="cpu", resume=True, progress=True)
    return last


def _measure(setting: str, method: str, model: Path, case: Path, out: Path, threads: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--method",
        method,
        "--setting",
        setting,
        "--model",
        str(model),
        "--case",
        str(case),
        "--out",
        str(out),
        "--threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} / {setting} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _region_dice(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    from GliomaCompareLib.data.regions import region_masks
    from GliomaCompareLib.metrics.segmentation import dice

    ma, mb = region_masks(a), region_masks(b)
    return {r: dice(ma[r], mb[r]) for r in ma}


def _run_agreement(run: Path) -> None:
    """Crop vs whole volume (= MONAI's plain pass) on a finished run's trained segmentation
    network and test patients: per-case WT Dice between the two and against the ground truth."""
    from GliomaCompareLib.cnn.inference import Segmenter, load_segmenter
    from GliomaCompareLib.data.case import load_case
    from GliomaCompareLib.data.discovery import discover_cases
    from GliomaCompareLib.data.splits import Splits

    cohort = discover_cases(run / "data")
    test = set(Splits.load(run / "splits.json").ids("test"))
    trained = load_segmenter(run / "stages" / "cnn-train-seg" / "model", device="cpu")
    crop = Segmenter(trained.network, replace(trained.config, crop=True), model_id="crop")
    whole = Segmenter(trained.network, replace(trained.config, crop=False), model_id="whole")
    print(f"\nrun {run}: the run's segmentation network ({trained.model_id}) on its test patients")
    rows = []
    for record in (c for c in cohort.usable if c.case_id in test):
        case = load_case(record, cohort.convention)
        a, b = crop.predict(case).label, whole.predict(case).label
        rows.append(
            (_region_dice(a, b)["WT"], _region_dice(a, case.label)["WT"],
             _region_dice(b, case.label)["WT"])
        )  # fmt: skip
        print(f"  {case.case_id}: WT Dice(crop, whole) {rows[-1][0]:.4f}; vs ground truth "
              f"crop {rows[-1][1]:.3f}, whole {rows[-1][2]:.3f}")  # fmt: skip
    if rows:
        mean = np.mean(rows, axis=0)
        print(f"  mean: Dice(crop, whole) {mean[0]:.4f}; vs ground truth crop {mean[1]:.3f}, "
              f"whole {mean[2]:.3f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--settings", default="bundle,128", help="comma list of: " + ", ".join(SETTINGS)
    )
    parser.add_argument(
        "--weights", help="weights file for the bundle's SegResNet (else: train here)"
    )
    parser.add_argument(
        "--train-epochs", type=int, default=10, help="epochs when training here (default 10)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per method (fastest is kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--run",
        help="also compare crop and whole volume on a finished run's network and test patients "
        "(e.g. demo_out)",
    )
    # worker mode
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return 0

    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    model = Path(args.weights) if args.weights else _train_model(args.train_epochs, args.seed)
    weights_note = f"weights {args.weights}" if args.weights else f"trained here ({model})"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        case_path, truth = _make_case(tmp, args.seed + 100)
        print(
            f"case: synthetic 4x240x240x155 (seed {args.seed + 100}), network: bundle SegResNet (init_filters 16), {weights_note}"
        )
        print(f"torch threads {args.threads}; one window per forward pass in both (the CPU rule)")
        ok = True
        for setting in settings:
            roi, overlap = SETTINGS[setting]
            runs: dict[str, list[dict]] = {m: [] for m in METHODS}
            for _ in range(args.repeats):
                for method in METHODS:
                    runs[method].append(
                        _measure(
                            setting,
                            method,
                            model,
                            case_path,
                            tmp / f"{method}.npy",
                            args.threads,
                        )
                    )
            best = {m: min(r, key=lambda x: x["seconds"]) for m, r in runs.items()}
            plain, ours = np.load(tmp / "plain.npy"), np.load(tmp / "ours.npy")
            agree = _region_dice(ours, plain)
            truth_ours = _region_dice(ours, truth)
            truth_plain = _region_dice(plain, truth)
            ratio = best["plain"]["seconds"] / best["ours"]["seconds"]
            crop_only = best["plain"]["seconds"] / best["ours-contiguous"]["seconds"]
            contiguous = np.load(tmp / "ours-contiguous.npy")
            whole = np.load(tmp / "ours-whole.npy")
            whole_ratio = best["plain"]["seconds"] / best["ours-whole"]["seconds"]
            whole_agree = _region_dice(whole, plain)
            print(f"\nROI {'x'.join(map(str, roi))}, overlap {overlap} (setting '{setting}'):")
            for m in METHODS:
                b = best[m]
                times = ", ".join(f"{r['seconds']:.1f}" for r in runs[m])
                print(
                    f"  {m:15s}: {b['seconds']:7.1f} s per case (runs: {times}); peak RSS "
                    f"{b['peak_rss_mb']:7.0f} MB (+{b['peak_rss_mb'] - b['rss_before_mb']:.0f} MB over the loaded process)"
                )
            memory_ratio = best["plain"]["peak_rss_mb"] / best["ours"]["peak_rss_mb"]
            print(
                f"  speed ratio plain/ours: {ratio:.2f}x (target >= 2); peak memory ratio "
                f"{memory_ratio:.2f}x; the crop alone (ours-contiguous): {crop_only:.2f}x"
            )
            print(
                "  Dice(ours, ours-contiguous): "
                + ", ".join(f"{r} {v:.4f}" for r, v in _region_dice(ours, contiguous).items())
            )
            print(
                "  Dice(ours, plain): "
                + ", ".join(f"{r} {v:.4f}" for r, v in agree.items())
                + " (target >= 0.99)"
            )
            print(
                f"  ours-whole (crop: false): speed ratio plain/ours-whole {whole_ratio:.2f}x; "
                "Dice(ours-whole, plain): "
                + ", ".join(f"{r} {v:.4f}" for r, v in whole_agree.items())
            )
            print(
                "  Dice vs ground truth: ours "
                + ", ".join(f"{r} {v:.3f}" for r, v in truth_ours.items())
                + "; plain "
                + ", ".join(f"{r} {v:.3f}" for r, v in truth_plain.items())
            )
            for name, r, a in (("ours", ratio, agree), ("ours-whole", whole_ratio, whole_agree)):
                met = [f"speed {'met' if r >= 2 else 'NOT met'}"]
                met.append(f"agreement {'met' if min(a.values()) >= 0.99 else 'NOT met'}")
                print(f"  {name}: " + ", ".join(met))
            ok &= ratio >= 2 and min(agree.values()) >= 0.99
        if args.run:
            _run_agreement(Path(args.run))
        print("\nall targets met" if ok else "\nsome targets NOT met (see above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
