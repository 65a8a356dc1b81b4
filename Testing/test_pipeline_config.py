"""Run configs: presets, extends, overrides, typo refusal; the manifest."""

from __future__ import annotations

import pytest

from GliomaCompareLib.pipeline.config import apply_overrides, deep_merge, load_run_config
from GliomaCompareLib.pipeline.manifest import build_manifest, device_info
from GliomaCompareLib.versions import library_versions


def test_extends_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 1\nvlm:\n  backend: tiny\n  tasks: [grade, box]\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nvlm:\n  tasks: [point]\n")
    config, path = load_run_config(tmp_path / "child.yaml", ["vlm.runs=3", "seed=7"])
    assert path == (tmp_path / "child.yaml").resolve()
    assert config["vlm"] == {"backend": "tiny", "tasks": ["point"], "runs": 3}
    assert config["seed"] == 7 and config["name"] == "child"


def test_typos_and_loops_are_refused(tmp_path):
    (tmp_path / "typo.yaml").write_text("sed: 1\n")
    with pytest.raises(ValueError, match=r"typo.yaml: unknown top-level keys \['sed'\]"):
        load_run_config(tmp_path / "typo.yaml")
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="loop"):
        load_run_config(tmp_path / "a.yaml")
    with pytest.raises(FileNotFoundError, match="neither a file nor a preset"):
        load_run_config("no-such-preset")
    with pytest.raises(ValueError, match=r"key\.sub=value"):
        apply_overrides({}, ["novalue"])
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="mapping"):
        load_run_config(tmp_path / "list.yaml")


def test_deep_merge_does_not_mutate():
    base = {"a": {"b": 1, "c": [1]}}
    merged = deep_merge(base, {"a": {"b": 2}})
    assert merged == {"a": {"b": 2, "c": [1]}} and base == {"a": {"b": 1, "c": [1]}}


def test_manifest_records_versions_device_and_config():
    versions = library_versions()
    assert versions["torch"] and versions["monai"] and versions["numpy"]
    device = device_info("cpu")
    manifest = build_manifest({"seed": 3, "split": {"seed": 4}}, "x.yaml", device=device)
    assert manifest["seeds"] == {"seed": 3, "split": 4}
    assert manifest["device"]["device"] == "cpu"
    assert "commit" in manifest["git"]


def test_device_info_records_a_numbered_cuda_device_as_asked(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda:1' was requested"):
        device_info("cuda:1")  # it was recorded as "cpu" without a word
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU {i}")
    info = device_info("cuda:1")
    assert info["device"] == "cuda:1" and info["gpus"] == ["GPU 0", "GPU 1"]
    assert device_info("auto")["device"] == "cuda" and device_info("cpu")["device"] == "cpu"
