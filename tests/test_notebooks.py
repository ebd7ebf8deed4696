"""Every notebook runs top to bottom on a fresh kernel, and its outputs are clean: no warnings, no
errors, no "-0.00" and no raw float reprs like 0.9393086433410645."""

import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
NEGATIVE_ZERO = re.compile(r"-0\.0+(?![0-9])")  # "-0.00", not "-0.001"
RAW_FLOAT = re.compile(r"\d\.\d{8,}")  # unformatted floats print 15-17 digits


def output_texts(notebook):
    """(cell index, kind, text) of every text output: streams, and the text/plain and text/html of results."""
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "stream":
                yield index, output["name"], output["text"]
            for mime in ("text/plain", "text/html"):
                if mime in output.get("data", {}):
                    yield index, mime, output["data"][mime]


@pytest.mark.slow  # a fresh kernel per notebook: 4-6 s each
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors
    texts = list(output_texts(notebook))
    # e.g. "TqdmWarning: IProgress not found" when ipywidgets is missing (it is in the test extra)
    warnings = [(index, text) for index, kind, text in texts if kind == "stderr" and "Warning" in text]
    assert not warnings, warnings
    shown = [(index, kind, text) for index, kind, text in texts if kind != "text/html"]  # html: attention data
    assert not [(i, t) for i, _, t in shown if NEGATIVE_ZERO.search(t)], "an output shows -0.00: use format_number"
    assert not [(i, t) for i, _, t in shown if RAW_FLOAT.search(t)], "an output prints a raw float: format it"


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "induction_heads", "circuits", "decomposition_and_paths",
                                           "coming_from_transformer_lens"}
