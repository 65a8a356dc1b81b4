"""Benchmark: CNN segmentation of a full 4x240x240x155 case, ours vs MONAI's plain sliding window.

``--mode engines`` (the default; issue 15): every inference engine (``--engines``: OpenVINO, ONNX
Runtime, PyTorch) as a whole ``gliomacompare predict-cnn`` process (``-m GliomaCompareLib.cli``)
against the baseline "monai-plain", also a whole process (the same NIfTI in, label NIfTI out;
MONAI's ``sliding_window_inference`` over the whole volume in PyTorch). Same weights, ROI 128,
overlap 0.25, ``crop: false``, for a trained network (the bundle's SegResNet trained briefly here
on small synthetic cases, cached; or ``--weights``) and a random one. Printed per process: wall
time (start-up included; an engine's first run, which exports the network into
``<model>/engine/``, apart from its runs that reuse the export), peak resident memory (psutil,
the process and its children, sampled every 50 ms), the ratio against monai-plain and the Dice
between the label maps per region (WT, TC, ET). The figures depend on the machine (CPU kind,
cores, load): run it on a quiet machine. ``--quick``: a 4x128x128x96 case at ROI 64, to try it.
Full size, OpenVINO only, both networks (about 5-6 minutes on 2 cores once the trained network
is cached): ``--engines openvino``.

``--mode layouts`` (issue 13's comparison of the crop and layouts, in one process each):
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
import contextlib
import json
import os
import shutil
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


def _training_cohort(folder: Path, seed: int, shape: tuple[int, int, int]):
    """(cohort, splits) a bench network trains on: four synthetic cases of ``shape`` under
    ``folder/data``; the first three (sorted) train, the fourth validates."""
    from GliomaCompareLib.data.discovery import discover_cases
    from GliomaCompareLib.data.splits import Splits
    from GliomaCompareLib.data.synthetic import SynthConfig, write_cohort

    data = write_cohort(
        folder / "data", SynthConfig(cases=4, seed=seed + 1, shape=shape, hgg_fraction=0.75)
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
    return cohort, splits


def _train_model(epochs: int, seed: int) -> Path:
    """The bundle's SegResNet trained briefly on full-resolution synthetic cases (cached)."""
    from GliomaCompareLib.cnn.checkpoint import load_model_info, load_training_state
    from GliomaCompareLib.cnn.config import SegConfig, TrainSettings
    from GliomaCompareLib.cnn.train import train_segmenter

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
    cohort, splits = _training_cohort(folder, seed, (240, 240, 155))
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


# ---------------------------------------------------------------------------------------------
# engines (issue 15): whole `gliomacompare predict-cnn` processes against MONAI's plain pass

#: ROI and overlap of the engine comparison (whole volume, no crop: the bundle's labels).
ENGINE_ROI, ENGINE_OVERLAP = 128, 0.25
ENGINE_CONFIG = """\
cnn:
  seg:
    roi_size: [{roi}, {roi}, {roi}]
    overlap: {overlap}
    crop: false
"""


def _plain_process(args) -> None:
    """MONAI's plain pass as a whole process, with predict-cnn's input and output: the case's
    NIfTI files in, z-score per channel over non-zero voxels, ``sliding_window_inference`` over
    the whole volume (one window per pass, the contiguous layout), sigmoid > threshold,
    BraTS labels, a NIfTI label map out."""
    import torch
    from monai.inferers import sliding_window_inference

    from GliomaCompareLib.cnn.config import load_cnn_config
    from GliomaCompareLib.cnn.inference import load_segmenter
    from GliomaCompareLib.cnn.preprocess import normalize_channels
    from GliomaCompareLib.data.case import load_case
    from GliomaCompareLib.data.discovery import discover_cases
    from GliomaCompareLib.data.io import write_nifti
    from GliomaCompareLib.data.regions import labels_from_regions

    config = load_cnn_config(args.config).seg
    seg = load_segmenter(args.model, config=config, device="cpu", engine="torch")
    network = seg.network.to(memory_format=torch.contiguous_format).eval()  # MONAI's default
    cohort = discover_cases(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for record in cohort.usable:
        case = load_case(record, cohort.convention, with_label=False)
        image = np.stack([case.modality(c) for c in config.channels])
        tensor = torch.from_numpy(normalize_channels(image))[None]
        with torch.inference_mode():
            logits = sliding_window_inference(
                tensor, config.roi_size, 1, network, overlap=config.overlap, mode="constant"
            )
        masks = (torch.sigmoid(logits[0]) > config.threshold).numpy()
        by = {r: masks[i] for i, r in enumerate(config.regions)}
        label = labels_from_regions(by["WT"], by["TC"], by["ET"], cohort.convention)
        write_nifti(out / f"{record.case_id}.nii.gz", label, case.affine)


def _run_process(cmd: list[str]) -> dict:
    """Wall time (start-up included) and peak resident memory (psutil, sampled every 50 ms,
    the process and its children) of a command."""
    import threading

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        try:
            import psutil

            root = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                    peak[0] = max(peak[0], rss / 2**20)
                except psutil.Error:
                    pass
                done.wait(0.05)
        except ImportError:
            peak[0] = float("nan")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"seconds": seconds, "peak_mb": peak[0], "log": stderr}


def _train_small(epochs: int, seed: int) -> Path:
    """The bundle's SegResNet (init_filters 16) trained briefly on half-resolution synthetic
    cases (cached): enough for decisive outputs (probabilities far from 0.5), which is what the
    label agreement needs; the network is fully convolutional, so it runs on full-size cases."""
    from GliomaCompareLib.cnn.checkpoint import load_model_info
    from GliomaCompareLib.cnn.config import SegConfig, TrainSettings
    from GliomaCompareLib.cnn.train import train_segmenter

    folder = _cache_dir() / f"segresnet16-small-e{epochs}-s{seed}"
    model = folder / "model"
    with contextlib.suppress(FileNotFoundError, ValueError):
        if load_model_info(model).metrics.get("epochs_planned") == epochs:
            return model
    cohort, splits = _training_cohort(folder, seed, (96, 96, 64))
    config = SegConfig(
        patch_size=(64, 64, 64),
        roi_size=(64, 64, 64),
        overlap=0.25,
        samples_per_case=2,
        pos_fraction=0.6,
        train=TrainSettings(
            epochs=epochs, batch_size=2, learning_rate=3e-3, seed=seed, cache="memory"
        ),
    )
    print(f"training the trained network ({epochs} epochs, 3 synthetic 96x96x64 cases; "
          f"cached in {folder}) ...", flush=True)  # fmt: skip
    train_segmenter(cohort, model, splits, config, device="cpu", resume=True, progress=False)
    return model


def _random_weights(folder: Path, seed: int) -> Path:
    """A random-initialised bundle SegResNet as a safetensors weights file."""
    import torch
    from safetensors.torch import save_file

    from GliomaCompareLib.cnn.config import SegConfig
    from GliomaCompareLib.cnn.networks import build_network

    config = SegConfig()
    torch.manual_seed(seed)
    network = build_network(config.network, len(config.channels), len(config.regions), "seg")
    path = folder / "random" / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    return path


def _engine_runs(model: Path, data: Path, config: Path, tmp: Path, engines) -> dict[str, dict]:
    """monai-plain, then per engine predict-cnn with its export made first (the cache emptied)
    and then reused; label maps under ``tmp``."""
    cli = [sys.executable, "-m", "GliomaCompareLib.cli"]
    runs = {}
    out = tmp / "monai-plain"
    runs["monai-plain"] = _run_process(
        [
            sys.executable,
            __file__,
            "--plain-process",
            "--data",
            str(data),
            "--model",
            str(model),
            "--config",
            str(config),
            "--out",
            str(out),
        ]
    ) | {"out": out}
    cache = (model if model.is_dir() else model.parent) / "engine"
    for engine in engines:
        firsts = ("first export", "cached export") if engine != "torch" else ("",)
        if engine != "torch":
            shutil.rmtree(cache, ignore_errors=True)
        for when in firsts:
            name = f"{engine} ({when})" if when else engine
            out = tmp / name.replace(" ", "_").replace("(", "").replace(")", "")
            runs[name] = _run_process(
                [
                    *cli,
                    "-v",
                    "predict-cnn",
                    "--data",
                    str(data),
                    "--model",
                    str(model),
                    "--config",
                    str(config),
                    "--out",
                    str(out),
                    "--engine",
                    engine,
                    "--device",
                    "cpu",
                    "--no-score",
                    "--quiet",
                ]
            ) | {"out": out}
            ran = [line for line in runs[name]["log"].splitlines() if "runs on" in line]
            runs[name]["ran"] = ran[-1].split(": ", 1)[-1] if ran else "?"
    return runs


def _report_engines(title: str, runs: dict[str, dict], case_id: str) -> bool:
    import nibabel as nib

    def label(run):
        return np.asarray(nib.load(run["out"] / f"{case_id}.nii.gz").dataobj)

    base = runs["monai-plain"]
    plain = label(base)
    share = (plain > 0).mean()
    print(f"\n{title} (tumour in {share:.1%} of the plain pass's voxels)")
    print(f"  {'method':34s} {'wall s':>7s} {'x vs monai-plain':>17s} {'peak MB':>8s}   "
          "Dice vs monai-plain WT / TC / ET")  # fmt: skip
    ok = True
    for name, run in runs.items():
        ratio = base["seconds"] / run["seconds"]
        agree = "" if run is base else " / ".join(
            f"{v:.4f}" for v in _region_dice(label(run), plain).values()
        )  # fmt: skip
        print(f"  {name:34s} {run['seconds']:7.1f} {ratio:16.2f}x {run['peak_mb']:8.0f}   {agree}")
        if "ran" in run:
            print(f"  {'':34s} ({run['ran']})")
        if name.endswith("(cached export)"):
            met = ratio >= 2.5 and min(_region_dice(label(run), plain).values()) >= 0.99
            print(f"  {'':34s} target (>= 2.5x, Dice >= 0.99): {'met' if met else 'NOT met'}")
            ok &= met
    return ok


def _compare_engines(args) -> bool:
    """Each engine as whole predict-cnn processes against monai-plain, for a trained and a
    random network, on one synthetic case (full size, or small with ``--quick``)."""
    from GliomaCompareLib.data.synthetic import SynthConfig, write_cohort

    shape = (128, 128, 96) if args.quick else (240, 240, 155)
    roi = 64 if args.quick else ENGINE_ROI
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_cohort(
            tmp / "data", SynthConfig(cases=1, seed=args.seed + 100, shape=shape, hgg_fraction=1.0)
        )
        case_id = sorted(p.name for p in data.iterdir() if p.is_dir())[0]
        config = tmp / "cnn.yaml"
        config.write_text(ENGINE_CONFIG.format(roi=roi, overlap=ENGINE_OVERLAP))
        print(f"case: synthetic 4x{'x'.join(map(str, shape))} (seed {args.seed + 100}); bundle "
              f"SegResNet (init_filters 16); ROI {roi}, overlap {ENGINE_OVERLAP}, whole volume "
              f"(crop: false); {os.cpu_count()} CPUs; every figure a whole process (start-up, "
              "reading the NIfTI files and writing the label map included)")  # fmt: skip
        for network in networks:
            if network == "trained":
                model = (
                    Path(args.weights)
                    if args.weights
                    else _train_small(args.train_epochs, args.seed)
                )
                # the engine cache goes beside the model: work on a copy of it
                if model.is_dir():
                    shutil.copytree(model, tmp / "trained", ignore=shutil.ignore_patterns("engine"))
                    model = tmp / "trained"
                else:
                    (tmp / "trained").mkdir()
                    model = Path(shutil.copy2(model, tmp / "trained" / model.name))
            elif network == "random":
                model = _random_weights(tmp, args.seed)
            else:
                raise SystemExit(f"--networks: unknown {network!r} (trained, random)")
            runs = _engine_runs(model, data, config, tmp / network, engines)
            ok &= _report_engines(f"{network} network ({model})", runs, case_id)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mode",
        default="engines",
        choices=("engines", "layouts"),
        help="engines: predict-cnn's engines against monai-plain (issue 15); layouts: the "
        "crop and memory layouts against the plain pass (issue 13)",
    )
    parser.add_argument(
        "--engines",
        default="openvino,onnxruntime,torch",
        help="engines mode: comma list of openvino, onnxruntime, torch",
    )
    parser.add_argument(
        "--networks", default="trained,random", help="engines mode: trained, random or both"
    )
    parser.add_argument(
        "--quick", action="store_true", help="engines mode: a 4x128x128x96 case at ROI 64"
    )
    parser.add_argument(
        "--settings",
        default="bundle,128",
        help="layouts mode: comma list of: " + ", ".join(SETTINGS),
    )
    parser.add_argument(
        "--weights", help="weights file for the bundle's SegResNet (else: train here)"
    )
    parser.add_argument(
        "--train-epochs",
        type=int,
        help="epochs when training here (default: 10 in layouts mode on full-size cases, 4 "
        "in engines mode on 96x96x64 cases)",
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
    parser.add_argument("--plain-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return 0
    if args.plain_process:
        _plain_process(args)
        return 0
    if args.mode == "engines":
        args.train_epochs = 4 if args.train_epochs is None else args.train_epochs
        ok = _compare_engines(args)
        print("\nall targets met" if ok else "\nsome targets NOT met (see above)")
        return 0
    args.train_epochs = 10 if args.train_epochs is None else args.train_epochs

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
