"""What can be checked of the Slicer module without the desktop application: the .ui parses and
holds every widget the code uses, parameter bindings match the parameter node, the module file
compiles and defines its classes, layering rules hold (no Qt in the logic, no slicer/qt/vtk in
GliomaCompareLib), the CMake files configure (against a stand-in Slicer) and package every file,
and the in-Slicer dependency lists match pyproject.toml."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import tomllib
from packaging.requirements import Requirement
from slicer_env import MODULE_DIR, REPO

UI = REPO / "Resources" / "UI" / "GliomaCompare.ui"
MODULE_FILE = MODULE_DIR / "GliomaCompare.py"
LIB = MODULE_DIR / "GliomaCompareSlicerLib"


def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI).getroot()
    assert root.tag == "ui" and root.findtext("class") == "GliomaCompare"
    return {w.get("name"): w for w in root.iter("widget")}


def used_ui_names(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute | ast.Name):
            base = node.value
            if (isinstance(base, ast.Attribute) and base.attr == "ui") or (
                isinstance(base, ast.Name) and base.id == "ui"
            ):
                names.add(node.attr)
        # getattr(self.ui, "nameCheckBox") through the _SHOW table
        widget_name = r"[a-z][A-Za-z]*(CheckBox|Button|ComboBox|Widget|Edit|Label)"
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(widget_name, node.value)
        ):
            names.add(node.value)
    return names


def test_ui_parses_and_has_every_widget_the_code_uses():
    widgets = ui_widgets()
    used = used_ui_names(MODULE_FILE) | used_ui_names(LIB / "widget.py")
    # the scan itself works: attribute use, and names reached through getattr tables
    assert {"runCnnButton", "cancelButton", "logTextEdit", "showVlmBoxCheckBox"} <= used
    assert "useSceneVolumesButton" in used
    # issue 14's widgets: the first-time path, the cache action
    assert {"sampleCaseButton", "runDemoButton", "clearCacheButton"} <= used
    missing = sorted(used - set(widgets))
    assert missing == [], f"widgets used in code but not in {UI.name}: {missing}"
    # custom widget classes are declared
    root = ET.parse(UI).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    custom = {
        w.get("class") for w in widgets.values() if w.get("class", "").startswith(("ctk", "qMRML"))
    }
    assert custom <= declared


def parameter_fields() -> dict[str, str]:
    tree = ast.parse(MODULE_FILE.read_text())
    cls = next(
        n
        for n in tree.body
        if isinstance(n, ast.ClassDef) and n.name == "GliomaCompareParameterNode"
    )
    assert any(ast.unparse(d) == "parameterNodeWrapper" for d in cls.decorator_list)
    return {
        n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)
    }


def test_parameter_bindings_match_the_parameter_node():
    fields = parameter_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = name
    assert set(bound) <= set(fields), sorted(set(bound) - set(fields))
    assert set(fields) == set(bound)  # every parameter has a widget
    assert "Choice" in fields["device"] and "'auto', 'cuda', 'cpu'" in fields["device"]
    assert "WithinRange" in fields["vlmTemperature"] and "WithinRange" in fields["vlmRuns"]
    # the code reads only parameters that exist
    code = (LIB / "widget.py").read_text()
    read = set(re.findall(r"\bp\.([a-zA-Z][a-zA-Z0-9]*)", code))
    assert read <= set(fields), sorted(read - set(fields))


def test_module_file_compiles_and_defines_module_widget_logic_test():
    source = MODULE_FILE.read_text()
    compile(source, str(MODULE_FILE), "exec")
    tree = ast.parse(source)
    classes = {
        n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)
    }
    assert classes["GliomaCompare"] == ["ScriptedLoadableModule"]
    assert classes["GliomaCompareWidget"][0] == "ScriptedLoadableModuleWidget"
    assert classes["GliomaCompareLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["GliomaCompareTest"] == ["ScriptedLoadableModuleTest"]
    assert "2509.10683" in source and 'categories = ["Segmentation"]' in source
    assert len(source.splitlines()) < 260  # a thin shell over the tested logic


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_layering():
    for name in ("cases", "paths", "process", "mrml", "logic", "testing", "dependencies"):
        assert not _imports(LIB / f"{name}.py") & {"qt", "ctk"}, name
    for name in ("cases", "paths", "process"):
        assert "slicer" not in _imports(LIB / f"{name}.py"), name
    for path in (REPO / "GliomaCompareLib").rglob("*.py"):
        assert not _imports(path) & {"slicer", "qt", "ctk", "vtk"}, path


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    with Image.open(REPO / "Resources" / "Icons" / "GliomaCompare.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


def test_slicer_dependency_lists_match_pyproject():
    from GliomaCompareSlicerLib import dependencies
    from packaging.requirements import Requirement

    declared = {
        Requirement(r).name.lower(): str(Requirement(r).specifier)
        for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    for text in (*dependencies.LOAD_REQUIREMENTS, *dependencies.RUN_REQUIREMENTS):
        req = Requirement(text)
        assert declared.get(req.name.lower()) == str(req.specifier), text
    assert declared["torch"] == dependencies.TORCH_REQUIREMENT
    assert dependencies.missing(["numpy>=1.0"]) == []
    assert dependencies.missing(["numpy>=999"]) == ["numpy>=999"]
    assert dependencies.missing(["surely-not-installed-gc-pkg"]) == ["surely-not-installed-gc-pkg"]


STUB_USE_SLICER = """
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/qt-scripted-modules)
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "unknown arguments ${MY_UNPARSED_ARGUMENTS}")
  endif()
  file(APPEND ${CMAKE_BINARY_DIR}/record.txt "module|${MY_NAME}|${MY_WITH_GENERIC_TESTS}|${CMAKE_CURRENT_SOURCE_DIR}|${MY_SCRIPTS}|${MY_RESOURCES}\\n")
endfunction()
function(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "unknown arguments ${MY_UNPARSED_ARGUMENTS}")
  endif()
  file(APPEND ${CMAKE_BINARY_DIR}/record.txt "ctk|${MY_TARGET_NAME}|${MY_SOURCE_DIR}|${MY_SCRIPTS}|${MY_RESOURCES}|${MY_DESTINATION_DIR}|${MY_NO_INSTALL_SUBDIR}\\n")
endfunction()
function(slicer_add_python_unittest)
  file(APPEND ${CMAKE_BINARY_DIR}/record.txt "unittest|${ARGN}\\n")
endfunction()
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_configures_and_packages_every_file(tmp_path):
    """Configure the real CMakeLists.txt against a stand-in Slicer that records the macro calls
    (same argument names as Slicer's SlicerMacroBuildScriptedModule.cmake / CTK's
    ctkMacroCompilePythonScript.cmake)."""
    fake = tmp_path / "fake-slicer"
    fake.mkdir()
    (fake / "SlicerConfig.cmake").write_text(
        "set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)\n"
        "set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)\n"
        "set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)\n"
    )
    (fake / "UseSlicer.cmake").write_text(STUB_USE_SLICER)
    (fake / "empty.cmake").write_text("")
    build = tmp_path / "build"
    run = subprocess.run(
        ["cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={fake}", "-DBUILD_TESTING=ON"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if run.returncode != 0 and "No CMAKE_CXX_COMPILER could be found" in run.stderr:
        pytest.skip("no C++ compiler for project() here")
    assert run.returncode == 0, run.stderr
    records = [line.split("|") for line in (build / "record.txt").read_text().splitlines()]
    module = next(r for r in records if r[0] == "module")
    assert module[1] == "GliomaCompare" and module[2] == "TRUE"
    scripts = module[4].split(";")
    for script in scripts:
        assert (MODULE_DIR / script).is_file(), script
    on_disk = {
        p.relative_to(MODULE_DIR).as_posix()
        for p in MODULE_DIR.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk == set(scripts)
    ctk = next(r for r in records if r[0] == "ctk")
    assert ctk[1] == "GliomaCompareLib" and ctk[2] == str(REPO) and ctk[6] == "TRUE"
    lib = set(ctk[3].split(";"))
    expected = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "GliomaCompareLib").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert expected <= lib and "GliomaCompareLib/slicer_files.py" in lib
    resources = set(ctk[4].split(";"))
    for required in (
        "Resources/UI/GliomaCompare.ui",
        "Resources/Icons/GliomaCompare.png",
        "Resources/conventions/brats2020.json",
    ):
        assert required in resources
    assert ctk[5].endswith("lib/qt-scripted-modules")
    assert any(r[0] == "unittest" and "GliomaCompare.py" in r[1] for r in records)


def test_top_level_cmake_declares_the_extension():
    text = (REPO / "CMakeLists.txt").read_text()
    for pattern in (
        r"project\(GliomaCompare\)",
        r"set\(EXTENSION_HOMEPAGE ",
        r"set\(EXTENSION_CATEGORY ",
        r"set\(EXTENSION_CONTRIBUTORS ",
        r"set\(EXTENSION_DESCRIPTION ",
        r"set\(EXTENSION_ICONURL ",
        r"set\(EXTENSION_SCREENSHOTURLS ",
        r"set\(EXTENSION_DEPENDS PyTorch\)",
        r"find_package\(Slicer REQUIRED\)",
        r"include\(\$\{Slicer_USE_FILE\}\)",
        r"add_subdirectory\(GliomaCompare\)",
        r"include\(\$\{Slicer_EXTENSION_GENERATE_CONFIG\}\)",
        r"include\(\$\{Slicer_EXTENSION_CPACK\}\)",
    ):
        assert re.search(pattern, text), pattern


class _TableModel:
    """What ``QTableWidget`` does with rows: ``clear()`` and ``clearContents()`` empty the cells
    but keep the row count; only ``setRowCount`` changes it."""

    def __init__(self, rows: int):
        self.rowCount = rows
        self.cells = {(r, 0): "old" for r in range(rows)}

    def clear(self):
        self.cells.clear()

    def clearContents(self):
        self.cells.clear()

    def setRowCount(self, n):
        self.rowCount = n


def _function(tree, name):
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)


def test_loading_a_case_empties_the_metrics_table():
    """Static (widget.py needs Qt): the previous case's score rows must not stay as blank rows
    above the new ones (``show_results`` appends at ``rowCount``)."""
    tree = ast.parse((LIB / "widget.py").read_text())
    namespace: dict = {}
    exec(compile(ast.Module([_function(tree, "_empty_table")], []), "widget.py", "exec"), namespace)
    table = _TableModel(7)
    namespace["_empty_table"](table)
    assert table.rowCount == 0 and not table.cells
    load = ast.unparse(_function(tree, "load"))
    assert "_empty_table(self.ui.metricsTableWidget)" in load
    # no function clears a table widget without also setting its row count
    for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        text = ast.unparse(func)
        if re.search(r"(TableWidget|\btable)\.clear\(\)", text):
            assert "setRowCount" in text, func.name


# ------------------------------------------------------------------ dependencies, self-test, CLI
def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(MODULE_DIR)])}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )


def test_each_action_asks_only_for_what_its_command_imports():
    from GliomaCompareSlicerLib import dependencies as deps

    for kind in ("cnn", "vlm", "load"):
        names = {Requirement(r).name for r in deps.requirements(kind)}
        assert not names & {"scikit-image", "nilearn", "matplotlib"}, kind
    assert {"monai"} <= {Requirement(r).name for r in deps.requirements("cnn")}
    vlm = {Requirement(r).name for r in deps.requirements("vlm")}
    assert {"transformers", "peft"} <= vlm and "monai" not in vlm
    with pytest.raises(ValueError, match="unknown kind"):
        deps.requirements("everything")


def test_torch_version_is_checked_without_importing_torch():
    run = _run_python(
        "import sys\n"
        "from importlib import metadata\n"
        "from packaging.version import Version\n"
        "from GliomaCompareSlicerLib import dependencies as d\n"
        "try:\n"
        "    too_old = Version(metadata.version('torch').split('+')[0]) < Version('2.4')\n"
        "except metadata.PackageNotFoundError:\n"
        "    too_old = True\n"
        "assert d.torch_missing() == too_old\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_declined_installation_is_not_installed_not_an_error(monkeypatch):
    import types

    from GliomaCompareSlicerLib import dependencies as deps

    absent = ["surely-not-installed-gc-pkg>=1"]

    def declines(need, confirm):
        raise RuntimeError("User declined package installation")

    def skips(need, confirm):  # Slicer's pip_ensure in testing mode installs nothing
        return None

    def fails(need, confirm):
        raise RuntimeError("pip failed: no such package")

    assert deps.install(absent, installer=declines) is False
    assert deps.install(absent, installer=skips) is False
    with pytest.raises(RuntimeError, match="pip failed"):
        deps.install(absent, installer=fails)
    assert deps.install(["numpy>=1.0"], installer=skips) is True
    # Slicer 5.11+: its pip_ensure gets Requirement objects, our prompt choice, our name
    calls = []

    def pip_ensure(reqs, prompt_install=True, requester=None):
        calls.append((reqs, prompt_install, requester))
        raise RuntimeError("User declined package installation")

    monkeypatch.setitem(sys.modules, "slicer.pydeps", types.SimpleNamespace(pip_ensure=pip_ensure))
    assert deps.install(absent, confirm=False) is False
    ((reqs, prompt, requester),) = calls
    assert [str(r) for r in reqs] == absent and isinstance(reqs[0], Requirement)
    assert prompt is False and requester == "GliomaCompare"


@pytest.mark.slicer
def test_self_test_mrml_part_runs_without_nibabel():
    """The registered self-test's first part must pass in a fresh Slicer (no nibabel); its
    file part is skipped there with a message (checked statically below)."""
    from slicer_env import slicer_core_available

    ok, why = slicer_core_available()
    if not ok:
        pytest.skip(why)
    run = _run_python(
        "import sys\n"
        "sys.modules['nibabel'] = None\n"
        "import slicer\n"
        "from GliomaCompareSlicerLib import mrml, testing\n"
        "scene = mrml.setup_scene(slicer.vtkMRMLScene())\n"
        "testing.check_mrml_round_trip(scene)\n"
        "assert scene.GetNumberOfNodesByClass('vtkMRMLScalarVolumeNode') == 0\n"
        "print('ok')\n"
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
    source = MODULE_FILE.read_text()
    run_test = source[source.index("def runTest") : source.index("def test_load_case")]
    assert run_test.index("check_mrml_round_trip") < run_test.index("LOAD_REQUIREMENTS")
    assert "Skipped" in run_test and "return" in run_test


def test_cli_without_fcntl_and_with_a_broken_command_module():
    """Windows has no fcntl; a command module whose package is missing must not take the other
    commands (and both Run buttons) down."""
    run = _run_python(
        "import sys; sys.modules['fcntl'] = None\n"
        "from GliomaCompareLib.cli import build_parser\n"
        "build_parser()\n"
        "print('ok')\n"
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
    run = _run_python(
        "import sys; sys.modules['GliomaCompareLib.report.commands'] = None\n"
        "from GliomaCompareSlicerLib.process import available_commands\n"
        "print(' '.join(sorted(available_commands())))\n"
    )
    assert run.returncode == 0, run.stderr
    commands = set(run.stdout.split())
    assert {"predict-cnn", "vlm", "inspect"} <= commands and "report" not in commands
    assert "GliomaCompareLib.report.commands: commands unavailable" in run.stderr


# ------------------------------------------------------------------ supported Slicer, metadata
def test_supported_slicer_is_checked_and_said_plainly():
    from GliomaCompareSlicerLib import paths

    assert paths.unsupported_reason((5, 10), (3, 12)) is None
    assert paths.unsupported_reason((5, 12), (3, 12, 10)) is None
    old = paths.unsupported_reason((5, 8), (3, 9))
    assert "3D Slicer 5.10 or later (Python 3.12)" in old and "this is Slicer 5.8" in old
    assert "Python 3.9" in paths.unsupported_reason(None, (3, 9))
    source = MODULE_FILE.read_text()
    tree = ast.parse(source)
    module_init = ast.unparse(_function(tree, "__init__"))  # GliomaCompare (the first class)
    assert "unsupported_reason()" in module_init and "helpText" in module_init
    setup = ast.unparse(_function(tree, "setup"))
    # the check comes before anything that needs Python 3.12 (the UI, the logic)
    assert setup.index("unsupported_reason()") < setup.index("loadUI")
    assert "return" in setup[: setup.index("loadUI")]
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "Requires 3D Slicer 5.10 or later (Python 3.12)" in cmake


def test_unset_path_fields_stay_empty():
    """Path parameters are ``str`` ("" when unset) behind a ctkPathLineEdit connector; as
    ``pathlib.Path`` they showed "." in all five path fields."""
    fields = parameter_fields()
    paths_bound = {
        prop.findtext("string")
        for w in ui_widgets().values()
        if w.get("class") == "ctkPathLineEdit"
        for prop in w.findall("property")
        if prop.get("name") == "SlicerParameterName"
    }
    assert len(paths_bound) == 5
    assert all(fields[name] == "str" for name in paths_bound), fields
    tree = ast.parse(MODULE_FILE.read_text())
    cls = next(
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.ClassDef) and n.name == "GliomaCompareParameterNode"
    )
    defaults = {
        n.target.id: ast.literal_eval(n.value)
        for n in cls.body
        if isinstance(n, ast.AnnAssign) and n.value is not None
    }
    assert all(defaults[name] == "" for name in paths_bound)
    widget = ast.parse((LIB / "widget.py").read_text())
    connector = next(
        n
        for n in widget.body
        if isinstance(n, ast.ClassDef) and n.name == "PathLineEditToStrConnector"
    )
    text = ast.unparse(connector)
    assert "parameterNodeGuiConnector" in ast.unparse(connector.decorator_list[0])
    assert "ctk.ctkPathLineEdit" in text and "is str" in text
    assert "self._widget.currentPath = value or ''" in text


def test_license_and_no_placeholder_urls():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "Neither the name" in text
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == {
        "text": "BSD-3-Clause"
    }
    cmake = (REPO / "CMakeLists.txt").read_text()
    for name in ("HOMEPAGE", "ICONURL", "SCREENSHOTURLS"):
        value = re.search(rf'set\(EXTENSION_{name} "([^"]*)"\)', cmake)
        assert value is not None, name
        assert "GliomaCompare/GliomaCompare" not in value[1], name  # the old placeholder


def test_scene_selectors_pick_volumes_and_get_the_scene():
    """The "Patient in the scene" selectors: volume / segmentation node types, bound to node
    parameters, and each given the scene by the module widget (else they list nothing)."""
    widgets = ui_widgets()
    combos = {n: w for n, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    assert set(combos) == {
        "flairVolumeSelector",
        "t1VolumeSelector",
        "t1ceVolumeSelector",
        "t2VolumeSelector",
        "referenceSegmentationSelector",
    }
    fields = parameter_fields()
    for name, widget in combos.items():
        props = {p.get("name"): p for p in widget.findall("property")}
        node_type = props["nodeTypes"].find("stringlist").findtext("string")
        param = props["SlicerParameterName"].findtext("string")
        assert fields[param] == f"slicer.{node_type}", name
    root = ET.parse(UI).getroot()
    fed = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("sender") == "GliomaCompare"
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert fed == set(combos)


def _section_of(name: str) -> str:
    """The collapsible section (``ctkCollapsibleButton``) a widget lies in."""
    root = ET.parse(UI).getroot()
    for section in root.iter("widget"):
        if section.get("class") == "ctkCollapsibleButton" and any(
            w.get("name") == name for w in section.iter("widget")
        ):
            return section.get("name")
    raise AssertionError(f"{name} is in no section")


def test_new_widgets_sit_in_their_sections_and_bind_their_parameters():
    """Expert options in a collapsed Advanced section with the cache action; the sample case and
    demo up front; the VLM slice choice beside the VLM with the parameter's four choices."""
    widgets = ui_widgets()
    for name in (
        "vlmTemperatureSliderWidget",
        "vlmRunsSpinBox",
        "vlmBaseUrlLineEdit",
        "vlmAllowRemoteCheckBox",
        "vlmAdapterPathLineEdit",
        "clearCacheButton",
    ):
        assert _section_of(name) == "advancedCollapsibleButton", name
    advanced = widgets["advancedCollapsibleButton"]
    collapsed = [p for p in advanced.findall("property") if p.get("name") == "collapsed"]
    assert collapsed and collapsed[0].findtext("bool") == "true"
    assert _section_of("sampleCaseButton") == _section_of("runDemoButton")
    assert _section_of("sampleCaseButton") == "startCollapsibleButton"
    for name in ("vlmSlicesComboBox", "runVlmButton", "slicesPerCaseSpinBox", "taskGradeCheckBox"):
        assert _section_of(name) == "runCollapsibleButton", name
    bound = {
        p.findtext("string"): n
        for n, w in widgets.items()
        for p in w.findall("property")
        if p.get("name") == "SlicerParameterName"
    }
    assert bound["vlmSlices"] == "vlmSlicesComboBox"
    from GliomaCompareSlicerLib.selectors import CHANNEL_PARAMETERS, REFERENCE_PARAMETER

    assert {*CHANNEL_PARAMETERS.values(), REFERENCE_PARAMETER} <= set(bound)
    fields = parameter_fields()
    assert "'reference', 'screen', 'cnn', 'brain'" in fields["vlmSlices"]
    from GliomaCompareSlicerLib.vlmslices import SLICE_CHOICES

    assert list(SLICE_CHOICES) == ["reference", "screen", "cnn", "brain"]
    # every form row index is used once per column (a moved row left no gap or clash)
    root = ET.parse(UI).getroot()
    for layout in root.iter("layout"):
        if layout.get("class") != "QFormLayout":
            continue
        cells = [(i.get("row"), i.get("column")) for i in layout.findall("item")]
        assert len(cells) == len(set(cells)), layout.get("name")
        rows = sorted({int(r) for r, _ in cells})
        assert rows == list(range(len(rows))), layout.get("name")


def test_sample_and_demo_ask_for_what_their_commands_import():
    from GliomaCompareSlicerLib import dependencies as deps

    sample = {Requirement(r).name for r in deps.requirements("sample")}
    assert "nilearn" in sample and not sample & {"torch", "monai", "transformers"}
    demo = {Requirement(r).name for r in deps.requirements("demo")}
    assert {"nilearn", "monai", "transformers", "matplotlib", "scikit-image"} <= demo
    declared = {
        Requirement(r).name.lower(): str(Requirement(r).specifier)
        for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    for text in deps.requirements("demo"):
        req = Requirement(text)
        assert declared.get(req.name.lower()) == str(req.specifier), text
    assert "demo" in deps._NEEDS_TORCH and "sample" not in deps._NEEDS_TORCH
