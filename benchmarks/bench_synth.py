"""Speed of the synthetic cohort generator.

Run: ``.venv/bin/python benchmarks/bench_synth.py [--cases N]``

Prints, per full-size (240x240x155) case, the seconds spent generating the arrays and writing
the five ``.nii.gz`` files, against the target of 2 s per case on a 2-core machine, and the same
for 48x48x32 cases. Baseline measured in the same run: reading the written case back with the
data layer (``discover_cases`` + ``load_case``), i.e. what every later stage pays per case.
The one-off cost of building the anatomy (from nilearn's files, with an empty disk cache) is
reported separately: it is paid once per shape and process, or once per machine with the cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_S = 2.0


def _time_cases(config, n: int, out: Path) -> tuple[list[float], list[float]]:
    from GliomaCompareLib.data.synthetic import generate_case, write_case

    gen, write = [], []
    for index in range(n):
        start = time.perf_counter()
        case = generate_case(index, config)
        made = time.perf_counter()
        write_case(case, out, config.ext)
        write.append(time.perf_counter() - made)
        gen.append(made - start)
    return gen, write


def _time_reading(data_dir: Path, n: int) -> list[float]:
    from GliomaCompareLib.data.case import load_case
    from GliomaCompareLib.data.discovery import discover_cases

    out = []
    for record in discover_cases(data_dir, validate=False).cases[:n]:
        start = time.perf_counter()
        load_case(record)
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4, help="full-size cases timed (default 4)")
    args = parser.parse_args()

    import nibabel.openers

    from GliomaCompareLib.data import synthetic
    from GliomaCompareLib.data.synthetic import SynthConfig

    print(f"nibabel gzip compresslevel: {nibabel.openers.Opener.default_compresslevel}")
    print(f"cpu count: {os.cpu_count()}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # one-off anatomy cost, cold (empty disk cache) and from the disk cache
        os.environ["GLIOMACOMPARE_CACHE_DIR"] = str(tmp / "cache")
        start = time.perf_counter()
        synthetic._atlas((240, 240, 155))
        synthetic._candidates()
        cold = time.perf_counter() - start
        synthetic._atlas.cache_clear()
        start = time.perf_counter()
        synthetic._atlas((240, 240, 155))
        warm = time.perf_counter() - start
        print(f"anatomy 240x240x155, once per process: {cold:.2f} s from nilearn's files, "
              f"{warm:.2f} s from the disk cache")  # fmt: skip

        rows = []
        for shape, n in (((240, 240, 155), args.cases), ((48, 48, 32), 20)):
            config = SynthConfig(cases=max(n, 1), seed=0, shape=shape)
            synthetic._atlas(shape)
            generate_case_warmup = synthetic.generate_case(0, config)  # imports, caches
            del generate_case_warmup
            data_dir = tmp / f"out_{shape[0]}" / synthetic.DATA_DIR_NAME
            gen, write = _time_cases(config, n, data_dir)
            read = _time_reading(data_dir, n)
            rows.append(
                (shape, n, statistics.mean(gen), statistics.mean(write), statistics.mean(read))
            )

    print()
    print("seconds per case (mean); baseline = reading the case back (discover + load_case)")
    header = f"{'shape':>12} {'n':>3} {'generate':>9} {'write':>7} {'total':>7} {'vs 2 s target':>14} {'vs baseline':>12} {'baseline':>9}"  # fmt: skip
    print(header)
    for shape, n, g, w, r in rows:
        total = g + w
        print(
            f"{'x'.join(map(str, shape)):>12} {n:>3} {g:>9.3f} {w:>7.3f} {total:>7.3f} "
            f"{total / TARGET_S:>13.2f}x {total / r:>11.2f}x {r:>9.3f}"
        )
    full_total = rows[0][2] + rows[0][3]
    verdict = "meets" if full_total <= TARGET_S else "MISSES"
    print(f"\nfull-size case: {full_total:.2f} s, {verdict} the {TARGET_S:.0f} s target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
