"""Benchmark: slices per second of the ``tiny`` VLM backend, batched vs one query at a time.

Both modes answer the same queries (real 240 x 240 FLAIR slices of a synthetic case, the four
tasks in pipeline order, greedy decoding, P(HGG) recorded for grade queries) in the same
process, so the ratio is measured against a baseline taken under the same machine load. Each
mode is timed ``--repeats`` times and the fastest pass counts (other processes on a shared
machine only ever slow a pass down). Greedy answers must be identical in both modes (left
padding must not change them); the script exits 1 if they are not.

Target (issue 5): batched (8) >= 2x the throughput of one at a time.

Run: ``.venv/bin/python benchmarks/bench_vlm_batch.py [--slices 16] [--batch-size 8]``
"""

from __future__ import annotations

import argparse
import sys
import time


def _slices(n: int):
    from GliomaCompareLib.data.slices import SliceRule, case_slices
    from GliomaCompareLib.data.synthetic import SynthConfig, generate_case

    config = SynthConfig(cases=1, seed=0, shape=(240, 240, 155))
    case = generate_case(0, config).as_case()
    slices = case_slices(case, SliceRule(max_slices=n))
    return case.case_id, slices


def _queries(slices, tasks):
    from GliomaCompareLib.vlm.types import Query

    out = []
    for image in slices:
        height, width = image.rgb.shape[:2]
        for name in ("grade", "point", "box", "polygon"):
            prompt = tasks[name].render(width, height)
            out.append(
                Query(image=image.rgb, prompt=prompt, seed=len(out), score_options=name == "grade")
            )
    return out


def _time(backend, queries, decoding, batch_size):
    start = time.perf_counter()
    texts = []
    for i in range(0, len(queries), batch_size):
        texts += [a.text for a in backend.answer(queries[i : i + batch_size], decoding)]
    return time.perf_counter() - start, texts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=8, help="slices (x4 tasks = queries)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from GliomaCompareLib.vlm.hf_backend import TransformersBackend
    from GliomaCompareLib.vlm.tasks import load_tasks
    from GliomaCompareLib.vlm.types import DecodingConfig

    case_id, slices = _slices(args.slices)
    backend = TransformersBackend.tiny(seed=0)
    queries = _queries(slices, load_tasks())
    decoding = DecodingConfig(max_new_tokens=args.max_new_tokens)
    _time(backend, queries[: args.batch_size], decoding, args.batch_size)  # warm-up
    one, batched = [], []
    for _ in range(args.repeats):
        seconds, texts_one = _time(backend, queries, decoding, 1)
        one.append(seconds)
        seconds, texts_batched = _time(backend, queries, decoding, args.batch_size)
        batched.append(seconds)
    n = len(queries)
    rate_one, rate_batched = n / min(one), n / min(batched)
    ratio = rate_batched / rate_one
    print(f"tiny backend ({backend.model_label}), {n} queries = {len(slices)} slices of "
          f"{case_id} x 4 tasks, 240x240, greedy, max_new_tokens={args.max_new_tokens}, "
          f"torch {torch.__version__}, {backend.num_threads or torch.get_num_threads()} "
          f"CPU thread(s); best of {args.repeats}")  # fmt: skip
    print(f"  one at a time : {rate_one:7.2f} queries/s ({min(one):.2f} s)")
    print(f"  batch of {args.batch_size:<4d}: {rate_batched:7.2f} queries/s ({min(batched):.2f} s)")
    print(f"  ratio batched / one-at-a-time: {ratio:.2f}x (target >= 2x: "
          f"{'met' if ratio >= 2 else 'NOT met'})")  # fmt: skip
    print(f"  slices per second: {rate_one / 4:.2f} -> {rate_batched / 4:.2f}")
    if texts_one != texts_batched:
        print("ERROR: batched greedy answers differ from one-at-a-time answers", file=sys.stderr)
        return 1
    print("  batched greedy answers identical to one-at-a-time answers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
