"""The comparison report: tables, published figures, banners, figures, gallery, escaping, CLI.

Run folders are built here, in tmp_path, the way the comparison run lays them out
(``GliomaCompareLib.runlayout``): per-case masks and answers are small synthetic images,
and every number in the CSVs comes from the real metric functions (Dice, HD95, classification
report with bootstrap, McNemar, Fleiss' kappa) and the real geometry code.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from GliomaCompareLib.geometry import (
    Box,
    Point,
    Polygon,
    box_to_mask,
    mask_centroid,
    point_to_mask,
    polygon_to_mask,
)
from GliomaCompareLib.metrics import (
    agreement,
    classification_report,
    dice,
    fleiss_kappa,
    hausdorff,
    mcnemar,
)
from GliomaCompareLib.report import (
    CaseGallery,
    GalleryAnswer,
    GradePrediction,
    ReportOptions,
    build_report,
    load_published,
    tables,
    write_gallery,
)
from GliomaCompareLib.report.cells import fmt_int
from GliomaCompareLib.report.rundata import TINY_LABEL, load_run
from GliomaCompareLib.report.table import Column
from GliomaCompareLib.report.tables import centre_summaries
from GliomaCompareLib.resources import resource_path
from GliomaCompareLib.runlayout import write_table

H = W = 40
Z = 4
CNN_MODEL = "MONAI SegResNet(16) + DenseNet121, test fixture weights"
REAL_VLM = "meta-llama/Llama-3.2-11B-Vision-Instruct"
TASKS = ("point", "box", "polygon")


def _disc(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _flair(gt: np.ndarray) -> np.ndarray:
    brain = _disc(W / 2 - 0.5, H / 2 - 0.5, W / 2 - 2)
    image = np.where(brain, 90, 0) + np.where(gt, 120, 0)
    return image.astype(np.uint8)


def _geometry_mask(geometry) -> np.ndarray:
    if isinstance(geometry, Point):
        return point_to_mask(geometry, (H, W), 3.0)
    if isinstance(geometry, Box):
        return box_to_mask(geometry, (H, W))
    return polygon_to_mask(geometry, (H, W))


def _centre(geometry) -> tuple[float, float]:
    if isinstance(geometry, Point):
        return geometry.x, geometry.y
    if isinstance(geometry, Box):
        return (geometry.x0 + geometry.x1) / 2, (geometry.y0 + geometry.y1) / 2
    c = mask_centroid(polygon_to_mask(geometry, (H, W)))
    return c.x, c.y


def _vlm_answer(task: str, rng, centred: bool, gt2d: np.ndarray):
    """A VLM answer: near the image centre (``centred``) or near the true tumour."""
    if centred:
        cx, cy = W / 2 - 0.5 + rng.normal(0, 1.0), H / 2 - 0.5 + rng.normal(0, 1.0)
    else:
        c = mask_centroid(gt2d)
        cx, cy = c.x + rng.normal(0, 1.0), c.y + rng.normal(0, 1.0)
    if task == "point":
        return Point(round(cx), round(cy))
    if task == "box":
        return Box(round(cx) - 5, round(cy) - 5, round(cx) + 5, round(cy) + 5)
    return Polygon(((cx - 6, cy - 4), (cx + 6, cy - 5), (cx + 5, cy + 6), (cx - 5, cy + 5)))


def make_run(
    root: Path,
    *,
    tiny: bool = True,
    finetuned: bool = True,
    summary: bool = True,
    cases: list[str] | None = None,
    synthetic: bool = True,
    seed: int = 0,
) -> tuple[Path, dict]:
    """A complete run folder; returns it and the expected values the tests check against."""
    rng = np.random.default_rng(seed)
    run = root / "run"
    metrics = run / "metrics"
    case_ids = cases or [f"BraTS20_Training_{i:03d}" for i in range(1, 11)]
    grades = ["HGG" if i % 4 != 3 else "LGG" for i in range(len(case_ids))]  # 3 LGG of 10
    vlm_model = TINY_LABEL if tiny else REAL_VLM
    vlm_methods = ("vlm_base", "vlm_finetuned") if finetuned else ("vlm_base",)
    models = {"cnn": CNN_MODEL, "vlm_base": vlm_model, "vlm_finetuned": f"{vlm_model} + LoRA"}

    seg_rows, slice_rows, grade_rows = [], [], []
    status_counts: dict[tuple, int] = {}
    preds: dict[str, list] = {m: [] for m in ("cnn", *vlm_methods)}
    scores: dict[str, list] = {m: [] for m in ("cnn", *vlm_methods)}
    cnn_dice = {}
    for i, (case_id, grade) in enumerate(zip(case_ids, grades, strict=True)):
        cx, cy = rng.uniform(9, W - 10), rng.uniform(9, H - 10)
        gt3 = np.stack([_disc(cx, cy, r) for r in (4, 6, 7, 5)], axis=-1)
        shift = i % 5  # CNN quality varies by case: case 0, 5 perfect; 4, 9 worst
        cnn3 = np.roll(gt3, shift * 2, axis=1)
        wt = dice(cnn3, gt3)
        cnn_dice[case_id] = wt
        for region, (pred, ref) in {
            "WT": (cnn3, gt3),
            "TC": (cnn3 & np.roll(gt3, 1, axis=0), gt3 & np.roll(gt3, 1, axis=0)),
            "ET": (cnn3 & np.roll(gt3, 2, axis=0), gt3 & np.roll(gt3, 2, axis=0)),
        }.items():
            seg_rows.append(
                {
                    "case_id": case_id,
                    "method": "cnn",
                    "model": CNN_MODEL,
                    "task": "seg",
                    "region": region,
                    "dice": dice(pred, ref),
                    "hd95": hausdorff(pred, ref),
                    "pred_voxels": int(pred.sum()),
                    "ref_voxels": int(ref.sum()),
                    "status": "ok",
                }
            )
        p_cnn = float(np.clip(0.85 if grade == "HGG" else 0.3, 0, 1) + rng.normal(0, 0.1))
        p_cnn = min(max(p_cnn, 0.0), 1.0)
        preds["cnn"].append("HGG" if p_cnn >= 0.5 else "LGG")
        scores["cnn"].append(p_cnn)
        grade_rows.append(
            {
                "case_id": case_id,
                "method": "cnn",
                "model": CNN_MODEL,
                "grade_true": grade,
                "grade_pred": preds["cnn"][-1],
                "p_hgg": p_cnn,
            }
        )
        answers: dict[str, dict[str, GalleryAnswer]] = {}
        gallery_preds = {"cnn": GradePrediction(preds["cnn"][-1], p_cnn, CNN_MODEL)}
        for method in vlm_methods:
            centred = method == "vlm_base" or i % 2 == 0
            stacks = {t: np.zeros_like(gt3) for t in TASKS}
            answers[method] = {}
            for k in range(Z):
                gt2 = gt3[..., k]
                for task in TASKS:
                    geometry = _vlm_answer(task, rng, centred, gt2)
                    status = "ok" if (i + k) % 7 else "invalid"
                    if status == "invalid":
                        geometry = None
                    mask = np.zeros((H, W), bool) if geometry is None else _geometry_mask(geometry)
                    stacks[task][..., k] = mask
                    true_c = mask_centroid(gt2)
                    pc = (None, None) if geometry is None else _centre(geometry)
                    slice_rows.append(
                        {
                            "case_id": case_id,
                            "slice_index": k,
                            "method": method,
                            "model": models[method],
                            "task": task,
                            "run": 0,
                            "status": status,
                            "dice_2d": dice(mask, gt2),
                            "hd95_2d": hausdorff(mask, gt2),
                            "point_inside": (
                                int(bool(gt2[int(geometry.y), int(geometry.x)]))
                                if task == "point" and geometry is not None
                                else None
                            ),
                            "pred_cx": pc[0],
                            "pred_cy": pc[1],
                            "true_cx": true_c.x,
                            "true_cy": true_c.y,
                            "width": W,
                            "height": H,
                        }
                    )
                    key = (method, task, status)
                    status_counts[key] = status_counts.get(key, 0) + 1
                    if k == 2:  # the gallery slice: the largest tumour area
                        answers[method][task] = GalleryAnswer(status, geometry)
            for task in TASKS:
                seg_rows.append(
                    {
                        "case_id": case_id,
                        "method": method,
                        "model": models[method],
                        "task": task,
                        "region": "WT",
                        "dice": dice(stacks[task], gt3),
                        "hd95": hausdorff(stacks[task], gt3),
                        "status": "ok",
                    }
                )
            if method == "vlm_base":
                pred, p = "HGG", 1.0  # the study's base model: HGG for nearly everyone
            else:
                pred = grade if i % 3 else ("LGG" if grade == "HGG" else "HGG")
                p = 0.8 if pred == "HGG" else 0.25
            preds[method].append(pred)
            scores[method].append(p)
            gallery_preds[method] = GradePrediction(pred, p, models[method])
            grade_rows.append(
                {
                    "case_id": case_id,
                    "method": method,
                    "model": models[method],
                    "grade_true": grade,
                    "grade_pred": pred,
                    "p_hgg": p,
                    "n_slices": Z,
                    "votes_hgg": Z if pred == "HGG" else 0,
                    "votes_lgg": 0 if pred == "HGG" else Z,
                }
            )
        write_gallery(
            run / "cases" / case_id / "gallery.npz",
            CaseGallery(
                case_id=case_id,
                grade=grade,
                slice_index=2,
                flair=_flair(gt3[..., 2]),
                gt=gt3[..., 2],
                cnn=cnn3[..., 2],
                pixel_spacing=(1.0, 1.0),
                answers=answers,
                predictions=gallery_preds,
                models={m: models[m] for m in ("cnn", *vlm_methods)},
            ),
        )

    cls_rows, reports = [], {}
    for method, predicted in preds.items():
        rep = classification_report(grades, predicted, scores[method], n_bootstrap=200, seed=1)
        reports[method] = rep
        row = {
            "method": method,
            "model": models[method],
            "n": rep.n,
            "tp": rep.tp,
            "fp": rep.fp,
            "tn": rep.tn,
            "fn": rep.fn,
            "n_invalid": rep.n_invalid,
            "accuracy": rep.accuracy,
            "precision": rep.precision,
            "sensitivity": rep.recall,
            "specificity": rep.specificity,
            "f1": rep.f1,
            "balanced_accuracy": rep.balanced_accuracy,
            "auc": rep.auc,
            "majority_baseline_accuracy": rep.majority_baseline_accuracy,
            "ci_level": rep.ci_level,
            "n_bootstrap": rep.n_bootstrap,
        }
        for metric, key in (
            ("accuracy", "accuracy"),
            ("balanced_accuracy", "balanced_accuracy"),
            ("sensitivity", "recall"),
            ("specificity", "specificity"),
            ("auc", "auc"),
        ):
            lo, hi = rep.ci.get(key, (None, None))
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = lo, hi
        cls_rows.append(row)
    comparisons, tests = [], {}
    for a, b in (("cnn", "vlm_base"), ("cnn", "vlm_finetuned"), ("vlm_base", "vlm_finetuned")):
        if a in preds and b in preds:
            t = mcnemar(grades, preds[a], preds[b])
            tests[(a, b)] = t
            comparisons.append(
                {
                    "method_a": a,
                    "method_b": b,
                    "n": t.n,
                    "b": t.b,
                    "c": t.c,
                    "statistic": t.statistic,
                    "p_value": t.p_value,
                    "test": t.method,
                }
            )
    status_rows = []
    for (method, task), total in _totals(status_counts).items():
        for (m, t, status), count in status_counts.items():
            if (m, t) == (method, task):
                status_rows.append(
                    {
                        "method": m,
                        "model": models[m],
                        "task": t,
                        "status": status,
                        "count": count,
                        "fraction": count / total,
                    }
                )
    repeated = [["HGG", "HGG", "LGG"], ["HGG", "HGG", "HGG"], ["LGG", "HGG", "LGG"]]
    consistency = [
        {
            "method": "vlm_base",
            "model": models["vlm_base"],
            "task": "grade",
            "n_items": 3,
            "runs": 3,
            "temperature": 0.0,
            "all_identical_rate": agreement(repeated).rate,
            "fleiss_kappa": fleiss_kappa(repeated),
        }
    ]
    write_table(metrics / "classification.csv", "classification", cls_rows)
    write_table(metrics / "grades.csv", "grades", grade_rows)
    write_table(metrics / "comparisons.csv", "comparisons", comparisons)
    write_table(metrics / "segmentation.csv", "segmentation", seg_rows)
    write_table(metrics / "slices.csv", "slices", slice_rows)
    write_table(metrics / "answer_status.csv", "answer_status", status_rows)
    write_table(metrics / "consistency.csv", "consistency", consistency)
    if summary:
        summary_rows = []
        for key in sorted({(r["method"], r["task"], r["region"]) for r in seg_rows}):
            group = [r for r in seg_rows if (r["method"], r["task"], r["region"]) == key]
            d = np.array([r["dice"] for r in group])
            h = np.array([r["hd95"] for r in group])
            summary_rows.append(
                {
                    "method": key[0],
                    "model": models[key[0]],
                    "task": key[1],
                    "region": key[2],
                    "n": len(group),
                    "dice_mean": d.mean(),
                    "dice_median": float(np.median(d)),
                    "dice_std": d.std(),
                    "hd95_mean": h.mean(),
                    "hd95_median": float(np.median(h)),
                    "hd95_std": h.std(),
                }
            )
        write_table(metrics / "segmentation_summary.csv", "segmentation_summary", summary_rows)
    manifest = {
        "tool": "gliomacompare",
        "version": "0.1.0",
        "created": "2025-01-01T00:00:00+0000",
        "command": ["gliomacompare", "run", "demo", "--out", str(run)],
        "config_path": "Resources/presets/demo.yaml",
        "config": {
            "name": "demo-test",
            "seed": 7,
            "data": {"synthetic": synthetic, "cases": len(case_ids)},
            "cnn": {"segmenter": "SegResNet", "init_filters": 16, "epochs": 2},
            "vlm": {
                "backend": "tiny" if tiny else "transformers",
                "coordinate_system": "pixel",
                "slice_rule": {"mode": "tumour_area", "max_slices": Z},
                "prompts": {"box": {"file": "box.txt", "sha256": "ab12cd34"}},
            },
            "finetune": {"enabled": finetuned, "lora": {"r": 8, "alpha": 16}},
            "report": {"gallery_count": 2},
        },
        "seeds": {"seed": 7, "split": 3},
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "versions": {"python": "3.11.2", "torch": "2.13.0"},
        "device": {"device": "cpu", "torch_threads": 2},
        "models": {"vlm_base": {"model_label": models["vlm_base"]}},
        "stages": {"cnn_train": {"seconds": 12.5}},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    expected = {
        "reports": reports,
        "tests": tests,
        "cnn_dice": cnn_dice,
        "case_ids": case_ids,
        "seg_rows": seg_rows,
    }
    return run, expected


def _totals(counts: dict[tuple, int]) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    for (m, t, _), c in counts.items():
        out[(m, t)] = out.get((m, t), 0) + c
    return out


def _section(page: str, anchor: str) -> str:
    """The HTML of ``<section ... id="anchor">`` up to its closing tag."""
    start = page.index(f'id="{anchor}"')
    return page[start : page.index("</section>", start)]


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    """A full run with the tiny VLM and its report (figures on), built once."""
    run, expected = make_run(tmp_path_factory.mktemp("tiny"))
    path = build_report(run)
    return run, expected, path, path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the numbers


def test_tables_hold_the_csv_numbers(tiny_report):
    run, expected, _, page = tiny_report
    md = (run / "metrics" / "classification.md").read_text(encoding="utf-8")
    cls_html = _section(page, "classification")
    for method, rep in expected["reports"].items():
        acc = f"{rep.accuracy:.3f}"
        lo, hi = rep.ci["accuracy"]
        cell = f"{acc} [{lo:.3f}, {hi:.3f}]"
        assert cell in md, (method, cell)
        # in HTML the interval sits on a second line under the value
        assert f'{acc}<br><span class="ci">[{lo:.3f}, {hi:.3f}]</span>' in cls_html
        assert f"{rep.tp} / {rep.fp} / {rep.tn} / {rep.fn}" in md
    # the base VLM answers HGG for everyone: specificity 0, said in words
    base = expected["reports"]["vlm_base"]
    assert base.specificity == 0.0
    assert f"VLM (base) called HGG for {base.n} of {base.n} patients (100.0%)" in md
    # segmentation means from the summary CSV, four decimals as the study prints them
    seg_md = (run / "metrics" / "segmentation.md").read_text(encoding="utf-8")
    wt = [r["dice"] for r in expected["seg_rows"] if r["method"] == "cnn" and r["region"] == "WT"]
    assert f"{np.mean(wt):.4f} ± {np.std(wt):.4f}" in seg_md
    assert f"{np.mean(wt):.4f}" in _section(page, "segmentation")


def test_published_figures_beside_ours(tiny_report):
    run, _, _, page = tiny_report
    published = load_published()
    md = (run / "metrics" / "classification.md").read_text(encoding="utf-8")
    for value in ("0.80", "0.76", "0.18", "0.72", "0.55", "0.50", "up to 0.80", "as low as 0.00"):
        assert value in md, value
    assert "0.794" in md  # always-HGG on the full BraTS 2020 set
    seg = (run / "metrics" / "segmentation.md").read_text(encoding="utf-8")
    loc = (run / "metrics" / "localisation.md").read_text(encoding="utf-8")
    assert "0.5942" in seg
    for value in ("0.1219", "0.0412"):
        assert value in seg and value in loc
    # abstract figures are quoted with their sentence; the citation link is on the page
    assert "The general LLM reached 76% accuracy" in page
    assert published.citation.url in page
    assert "*Published (abstract)*" in md  # published rows are set apart (italic)


def test_published_yaml_is_consistent():
    published = load_published()
    ids = {f.id for f in published.figures}
    assert {"cnn_accuracy", "cnn_dice", "vlm_dice_box", "vlm_dice_polygon"} <= ids
    for fig in published.figures:
        if fig.source == "abstract":  # the quoted sentence holds the figure as a percentage
            assert f"{round(fig.number * 100)}%" in fig.quote, fig.id
    majority = next(f for f in published.figures if f.method == "majority")
    assert majority.number == pytest.approx(293 / 369, abs=5e-4)
    # the localisation Dice belong to the general (base) LLM; figures not from the abstract say
    # they come from a secondary summary; nothing cites a file outside the repository
    by_id = {f.id: f for f in published.figures}
    assert by_id["vlm_dice_box"].method == by_id["vlm_dice_polygon"].method == "vlm_base"
    secondary = [f for f in published.figures if f.source == "results"]
    assert secondary and all(
        "secondary summary" in published.source_text(f.source) for f in secondary
    )
    assert "DESIGN.md" not in resource_path("published.yaml").read_text(encoding="utf-8")


def test_published_yaml_errors_name_the_entry(tmp_path):
    good = load_published()
    text = good.path.read_text()
    bad = tmp_path / "published.yaml"
    bad.write_text(text.replace('value: "0.5942"', 'value: "59.42"'))
    with pytest.raises(ValueError, match=r"figure 'cnn_dice': value 59.42 is outside"):
        load_published(bad)
    bad.write_text(text.replace("source: derived", "source: rumour"))
    with pytest.raises(ValueError, match=r"majority_hgg_brats2020.*source 'rumour'"):
        load_published(bad)
    with pytest.raises(FileNotFoundError):
        load_published(tmp_path / "absent.yaml")


def test_comparisons_say_in_words_whether_significant(tiny_report):
    run, expected, _, _ = tiny_report
    md = (run / "metrics" / "comparisons.md").read_text(encoding="utf-8")
    labels = {"cnn": "3D CNN", "vlm_base": "VLM (base)", "vlm_finetuned": "VLM (fine-tuned)"}
    for (a, b), t in expected["tests"].items():
        word = "significant at" if t.p_value < 0.05 else "not significant at"
        assert f"| {t.b:g} | {t.c:g} |" in md and f"{t.p_value:.4f}" in md
        assert f"- {labels[a]} vs {labels[b]}: {word} α = 0.05 (p = {t.p_value:.3g})" in md
    from GliomaCompareLib.report.tables import _verdict

    sig = _verdict(
        {"method_a": "cnn", "method_b": "vlm_base", "b": 30, "c": 2, "p_value": 1e-6}, 0.05
    )
    assert sig.startswith("significant") and "3D CNN was right on more patients" in sig
    ns = _verdict({"method_a": "cnn", "method_b": "vlm_base", "b": 3, "c": 2, "p_value": 1.0}, 0.05)
    assert ns.startswith("not significant")


# --------------------------------------------------------------------------- honesty


def test_tiny_banner_and_labels(tiny_report):
    run, _, _, page = tiny_report
    assert 'class="banner tiny"' in page
    assert 'class="banner synthetic"' in page
    for key in ("classification", "segmentation", "localisation", "centres", "answer_status"):
        assert TINY_LABEL in _section(page, key).split("</h2>")[0], key
        md = (run / "metrics" / f"{key}.md").read_text(encoding="utf-8")
        assert TINY_LABEL in md.splitlines()[0]
    # every figure drawn from the tiny model says so in its caption
    for fig in re.findall(r"<figcaption>(.*?)</figcaption>", page, flags=re.S):
        if "VLM" in fig:
            assert TINY_LABEL in fig


def test_no_tiny_banner_for_a_real_model(tmp_path):
    run, _ = make_run(tmp_path, tiny=False, synthetic=False)
    page = build_report(run, figures=False).read_text(encoding="utf-8")
    assert TINY_LABEL not in page
    assert 'class="banner' not in page.replace('class="banner problems"', "")
    assert REAL_VLM in _section(page, "classification")


def test_missing_parts_show_not_run(tmp_path):
    run, _ = make_run(tmp_path, finetuned=False, summary=False)
    (run / "metrics" / "consistency.csv").unlink()
    page = build_report(run, figures=False).read_text(encoding="utf-8")
    cls = (run / "metrics" / "classification.md").read_text(encoding="utf-8")
    assert re.search(r"\| VLM \(fine-tuned\) \| not run \|", cls)
    assert "not run" in _section(page, "consistency")
    assert "metrics/consistency.csv not found" in _section(page, "consistency")
    # without the summary CSV, the report summarises the per-case rows itself, and says so
    seg = (run / "metrics" / "segmentation.md").read_text(encoding="utf-8")
    assert "computed by the report from the per-case rows" in seg


def test_a_run_with_only_a_manifest(tmp_path):
    run, _ = make_run(tmp_path)
    for csv in (run / "metrics").glob("*.csv"):
        csv.unlink()
    page = build_report(run).read_text(encoding="utf-8")
    for key in ("classification", "comparisons", "segmentation", "consistency"):
        assert "not run" in _section(page, key)
    assert "No results yet" in page
    assert "demo-test" in page  # what was run is still there


def test_damaged_csv_is_reported_not_fatal(tmp_path):
    run, _ = make_run(tmp_path)
    path = run / "metrics" / "classification.csv"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split(",")[8], "abc", 1)  # accuracy not a number
    path.write_text("\n".join(lines) + "\n")
    page = build_report(run, figures=False).read_text(encoding="utf-8")
    assert "could not be read" in _section(page, "classification")
    assert 'class="banner problems"' in page and "classification.csv" in page


def test_not_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        build_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        build_report(tmp_path / "absent")


# --------------------------------------------------------------------------- the page itself


def test_self_contained_page(tiny_report):
    run, _, _, page = tiny_report
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page
    srcs = re.findall(r'\bsrc="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(srcs) == page.count("<img")
    hrefs = re.findall(r'\bhref="([^"]*)"', page)
    published = load_published()
    assert all(h.startswith("#") or h == published.citation.url for h in hrefs)
    assert not re.search(r'(src|href)="http(?!s://arxiv\.org/abs/2509\.10683")', page)
    # no temporary files left behind by the atomic writes
    assert not list(run.rglob("*.tmp"))


def test_figures_decode_as_png(tiny_report):
    import io

    from PIL import Image

    _, _, _, page = tiny_report
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # confusion matrices, Dice distributions, centres, and gallery panels
    assert len(images) >= 3 + 2
    for data in images:
        raw = base64.b64decode(data, validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            assert image.width > 100 and image.height > 100


def test_centre_clustering_is_visible(tiny_report):
    run, _, _, page = tiny_report
    summaries = {(s.method, s.task): s for s in centre_summaries(load_run(run), ReportOptions())}
    base = summaries[("vlm_base", "point")]
    # base answers sit near the image centre; true centres are spread out
    assert base.pred_from_centre < 0.1 < base.true_from_centre
    assert base.clustered and base.ratio < 0.5
    sentence = f"predicted centres lie on average {base.pred_from_centre:.3f}"
    assert sentence in page
    assert "cluster near the image centre" in _section(page, "centres")


def test_centre_summary_without_clustering(tmp_path):
    """Predictions on the tumour: ratio ~1, not clustered; correlation with the truth ~1."""
    from GliomaCompareLib.runlayout import write_table

    rng = np.random.default_rng(3)
    rows = []
    for i in range(30):
        tx, ty = rng.uniform(0, W - 1, size=2)
        rows.append(
            {
                "case_id": f"c{i}",
                "slice_index": 0,
                "method": "vlm_base",
                "model": REAL_VLM,
                "task": "point",
                "run": 0,
                "status": "ok",
                "pred_cx": tx + 0.5,
                "pred_cy": ty,
                "true_cx": tx,
                "true_cy": ty,
                "width": W,
                "height": H,
            }
        )
    write_table(tmp_path / "metrics" / "slices.csv", "slices", rows)
    (s,) = centre_summaries(load_run(tmp_path), ReportOptions())
    assert s.n == 30 and not s.clustered
    assert s.ratio == pytest.approx(1.0, abs=0.05)
    assert s.r_x == pytest.approx(1.0, abs=1e-3) and s.r_y == pytest.approx(1.0, abs=1e-9)
    assert s.pred_to_true == pytest.approx(0.5 / W, abs=1e-9)
    assert s.collapse == "not collapsed"


def test_centres_collapsed_onto_two_places_are_called_collapsed(tmp_path):
    """Points spread as far from the centre as the truth (so "not clustered near the centre"),
    but all on two places: the collapse test says so, the old ratio test could not."""
    from GliomaCompareLib.report.summaries import centre_sentence

    rng = np.random.default_rng(5)
    rows = []
    for i in range(30):
        tx, ty = rng.uniform(2, W - 3, size=2)
        px, py = (4.0, 4.0) if i % 2 else (W - 5.0, H - 5.0)
        rows.append({"case_id": f"c{i}", "slice_index": 0, "method": "vlm_base",
                     "model": REAL_VLM, "task": "point", "run": 0, "status": "ok",
                     "pred_cx": px, "pred_cy": py, "true_cx": tx, "true_cy": ty,
                     "width": W, "height": H})  # fmt: skip
    write_table(tmp_path / "metrics" / "slices.csv", "slices", rows)
    (s,) = centre_summaries(load_run(tmp_path), ReportOptions())
    assert not s.clustered and s.collapse == "collapsed"
    assert "the predictions have collapsed" in centre_sentence(s, ReportOptions())


def test_gallery_shows_worst_and_best(tiny_report):
    _run, expected, _, page = tiny_report
    gallery = page[page.index('id="gallery"') :]
    cnn = gallery[gallery.index("by CNN whole-tumour Dice") : gallery.index("by VLM (base) box")]
    order = sorted(expected["cnn_dice"].items(), key=lambda kv: (kv[1], kv[0]))
    worst_two = [c for c, _ in order[:2]]
    best_two = [c for c, _ in sorted(order, key=lambda kv: (-kv[1], kv[0]))[:2]]
    worst_html = cnn[cnn.index("<h4>Worst") : cnn.index("<h4>Best")]
    best_html = cnn[cnn.index("<h4>Best") :]
    # gallery_count 2 comes from the run config's report section
    assert worst_html.count("<figure>") == 2 and best_html.count("<figure>") == 2
    for case in worst_two:
        assert f"{case} — true grade" in worst_html
    for case in best_two:
        assert f"{case} — true grade" in best_html
    assert worst_html.index(worst_two[0]) < worst_html.index(worst_two[1])
    assert "P(HGG)" in worst_html and "axial slice 2" in worst_html


def test_escaping_of_case_ids(tmp_path):
    cases = ["case<b>&1", "BraTS20_Training_002", "BraTS20_Training_003", "BraTS20_Training_004"]
    run, _ = make_run(tmp_path, cases=cases)
    (run / "cases" / "BraTS20_Training_004" / "gallery.npz").unlink()
    page = build_report(run, gallery_count=4).read_text(encoding="utf-8")
    assert "case<b>" not in page
    assert "case&lt;b&gt;&amp;1" in page
    # a case without its gallery file is named, not dropped and not fatal
    assert "cases/BraTS20_Training_004/gallery.npz not found" in page
    md = (run / "metrics" / "summary.md").read_text(encoding="utf-8")
    assert md.startswith("# GliomaCompare results")


def test_what_was_run(tiny_report):
    _, _, _, page = tiny_report
    section = _section(page, "what-was-run")
    for text in ("0123456789abcdef", "ab12cd34", "tumour_area", "coordinate_system", "12.5 s"):
        assert text in section, text
    assert "Choices the study left open" in section
    assert "config.finetune.lora.r" in section


def test_adding_a_column_is_one_place(tmp_path, monkeypatch):
    """One Column more in the classification spec: Markdown and HTML both show it."""
    called = Column(
        "Called HGG",
        lambda r: fmt_int((r.get("tp") or 0) + (r.get("fp") or 0)),
        numeric=True,
    )
    monkeypatch.setattr(tables, "CLASSIFICATION", tables.CLASSIFICATION.with_columns(called))
    run, expected = make_run(tmp_path)
    page = build_report(run, figures=False).read_text(encoding="utf-8")
    md = (run / "metrics" / "classification.md").read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| Method |"))
    assert header.endswith("| vs majority (McNemar) | Called HGG |")
    cnn = expected["reports"]["cnn"]
    cnn_line = next(line for line in md.splitlines() if line.startswith("| 3D CNN | This run"))
    assert cnn_line.endswith(f"| {cnn.tp + cnn.fp} |")
    assert md.splitlines()[md.splitlines().index(header) + 1].endswith("| ---: | ---: |")
    section = page[page.index('id="classification"') :]
    section = section[: section.index("</section>")]
    assert '<th class="num">Called HGG</th></tr>' in section
    assert re.search(rf'<td class="num">{cnn.tp + cnn.fp}</td></tr>', section)
    # published lines get an empty cell in the new column, not a shifted row
    published = [line for line in md.splitlines() if "*Published (abstract)*" in line]
    assert published and all(line.endswith("|   |") for line in published)


def test_cli_report(tmp_path, capsys):
    from GliomaCompareLib.cli import main

    run, _ = make_run(tmp_path)
    out = tmp_path / "elsewhere.html"
    assert main(["report", str(run), "--out", str(out), "--no-figures", "--alpha", "0.01"]) == 0
    assert str(out) in capsys.readouterr().out
    assert "α = 0.01" in out.read_text(encoding="utf-8")
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_report_options_from_config():
    options, problems = ReportOptions.from_config({"gallery_count": 5, "colour": "red"})
    assert options.gallery_count == 5 and problems and "report.colour" in problems[0]
    options, _ = ReportOptions.from_config({"gallery_count": 5}, gallery_count=1, alpha=None)
    assert options.gallery_count == 1 and options.alpha == 0.05
    with pytest.raises(ValueError, match="alpha"):
        ReportOptions(alpha=1.5)


def test_labels_match_the_vlm_arm():
    from GliomaCompareLib.data import statuses
    from GliomaCompareLib.report.tables import ANSWER_STATUSES, USABLE_STATUSES
    from GliomaCompareLib.vlm import parsing, tiny

    assert tiny.TINY_MODEL_LABEL == TINY_LABEL
    assert ANSWER_STATUSES is parsing.PARSE_STATUSES
    assert USABLE_STATUSES is parsing.USABLE_STATUSES is statuses.USABLE_STATUSES
    assert set(USABLE_STATUSES) < set(ANSWER_STATUSES)
