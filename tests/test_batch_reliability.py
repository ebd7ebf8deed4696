"""Batch runs never corrupt silently: locking, run identity, atomic report sets, permissions, input checks.

One test (or a few) per item of the issue "No silent corruption"; each reproduces its bug on the code
before the fix. Workloads are tiny (8 sequences of 10 tokens on the bundled model, 4 units of 2).
"""

import codecs
import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp import batch, cli, files, loading, report
from interp.model import HookedTransformer
from interp.analysis.heads import SCORE_TYPES, HeadScores
from interp.report import HeadScoreReport
from interp.viz import AttentionView

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--random-repeated", "8", "--length", "10", "--unit-size", "2", "--batch-size", "4", "--no-progress",
        "--format", "json"]


def toy_job(out: Path, **overrides) -> batch.HeadsJob:
    settings = dict(random_repeated=8, length=10, unit_size=2, batch_size=4, out_dir=out, progress=False,
                    formats=("json",))  # the HTML page (matplotlib) only where a test needs it
    settings.update(overrides)
    return batch.HeadsJob(**settings)


def run_folder(out: Path) -> Path:
    return out / "interp-toy" / "repeated"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (lock files aside: a refused run may create them) -> its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and not path.name.startswith(".lock")}


def hold_lock(folder: Path):
    """Lock the run folder from this process, as a running `interp heads` would."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def cli_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "interp.cli", "heads", *TINY, *argv]


def cli_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def toy():
    return HookedTransformer.from_pretrained("interp-toy")


# ----- 1. a run folder is locked; units carry their run's identity ---------------------------------
def test_a_locked_run_folder_is_refused_and_released(tmp_path):
    folder = run_folder(tmp_path)
    handle = hold_lock(folder)
    try:
        with pytest.raises(OSError, match="another run holds") as error:
            batch.run(toy_job(tmp_path))
        assert str(folder) in str(error.value)
        assert not (folder / "units").exists() and not (folder / "manifest.json").exists()
    finally:
        os.close(handle)
    (outcome,) = batch.run(toy_job(tmp_path))  # once the holder is gone, the folder is free
    assert outcome.report is not None


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    folder = run_folder(tmp_path)
    folder.mkdir(parents=True)
    holder = ("import fcntl, os, sys, time\n"
              f"handle = os.open({str(folder / '.lock')!r}, os.O_RDWR | os.O_CREAT, 0o666)\n"
              "fcntl.flock(handle, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(120)\n")
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(OSError, match="another run holds"):
            batch.run(toy_job(tmp_path))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
    (outcome,) = batch.run(toy_job(tmp_path))
    assert outcome.report is not None


def test_two_different_runs_into_one_folder_never_both_succeed(tmp_path):
    out = tmp_path / "mix"
    processes = [subprocess.Popen(cli_command("--seed", str(seed), "--out", str(out)), cwd=ROOT, env=cli_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    results = [(process.communicate(timeout=180)[1], process.returncode)[::-1] for process in processes]
    codes = [code for code, _ in results]
    assert sorted(codes) == [0, 2], results
    winner, loser = codes.index(0), codes.index(2)
    assert "another run" in results[loser][1] or "--overwrite" in results[loser][1]
    data = json.loads((run_folder(out) / "report.json").read_text())
    assert data["protocol"]["seed"] == winner  # the report is all one run's


def test_a_unit_of_another_run_is_never_merged(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        batch.run(toy_job(tmp_path / "a"), stop_after=2)
    batch.run(toy_job(tmp_path / "b", seed=1))
    foreign = run_folder(tmp_path / "b") / "units" / "00002.json"
    planted = run_folder(tmp_path / "a") / "units" / "00002.json"
    planted.write_bytes(foreign.read_bytes())
    with pytest.raises(ValueError, match="another run") as error:
        batch.run(toy_job(tmp_path / "a", resume=True))
    assert str(planted) in str(error.value)
    assert not (run_folder(tmp_path / "a") / "report.json").exists()


# ----- 2. --resume without a manifest checks each unit's identity ---------------------------------
def test_resume_without_manifest_refuses_units_of_another_run(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        batch.run(toy_job(tmp_path, seed=1), stop_after=2)
    folder = run_folder(tmp_path)
    (folder / "manifest.json").unlink()
    with pytest.raises(ValueError, match="another run") as error:
        batch.run(toy_job(tmp_path, seed=0, resume=True))
    message = str(error.value)
    assert str(folder / "units" / "00000.json") in message and "--overwrite" in message and "--out" in message
    assert not (folder / "report.json").exists()


def test_resume_without_manifest_keeps_units_of_the_same_run(tmp_path):
    (reference,) = batch.run(toy_job(tmp_path / "one_go"))
    with pytest.raises(KeyboardInterrupt):
        batch.run(toy_job(tmp_path / "crashed"), stop_after=2)
    (run_folder(tmp_path / "crashed") / "manifest.json").unlink()
    (resumed,) = batch.run(toy_job(tmp_path / "crashed", resume=True))
    assert resumed.files["json"].read_bytes() == reference.files["json"].read_bytes()


# ----- 3. ordinary permissions ---------------------------------------------------------------------
@pytest.fixture
def umask():
    """Set the process umask for one test (os.umask), restoring the old one afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def test_every_file_of_a_run_has_umask_permissions(tmp_path, umask):
    umask(0o022)
    with pytest.raises(KeyboardInterrupt):
        batch.run(toy_job(tmp_path), stop_after=2)  # units of a stopped run too
    batch.run(toy_job(tmp_path, resume=True, formats=report.FORMATS))
    written = [path for path in run_folder(tmp_path).rglob("*") if path.is_file()]
    names = {path.name for path in written}
    assert {"report.json", "scores.csv", "summary.md", "report.html", "manifest.json", "00003.json"} <= names
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in written} == {path.name: "0o644" for path in written}


def test_attention_view_save_has_umask_permissions(tmp_path, umask):
    umask(0o027)
    view = AttentionView(["a", "b"], {"h": torch.tensor([[1.0, 0.0], [0.5, 0.5]])})
    assert view.save(tmp_path / "view.html").stat().st_mode & 0o777 == 0o640


def test_report_write_atomic_is_the_files_writer():
    assert report.write_atomic is files.write_atomic


# ----- 4. byte-order marks and NUL bytes -------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_utf16_and_utf32_files_with_a_bom_are_decoded(tmp_path, encoding):
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE,
           "utf-32-le": codecs.BOM_UTF32_LE, "utf-32-be": codecs.BOM_UTF32_BE}.get(encoding, b"")
    path = tmp_path / "prompts.txt"
    path.write_bytes(bom + "first prompt\r\nsecond, café\n\nthird\n".encode(encoding))
    prompts, problems = batch.read_prompts(path)
    assert prompts == [(1, "first prompt"), (2, "second, café"), (4, "third")]
    assert [number for number, _ in problems] == [3]


@pytest.mark.parametrize("name, content", [("prompts.txt", b"\xef\xbb\xbfhello\nworld\n"),
                                           ("prompts.jsonl", b'\xef\xbb\xbf{"text": "hello"}\n"world"\n')])
def test_a_utf8_bom_is_stripped(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert batch.read_prompts(path) == ([(1, "hello"), (2, "world")], [])


def test_nul_bytes_are_a_problem_with_the_line_number(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"good line\nbad\x00line\nlast\n")
    prompts, problems = batch.read_prompts(path)
    assert prompts == [(1, "good line"), (3, "last")]
    assert [number for number, _ in problems] == [2] and "NUL" in problems[0][1]


def test_a_utf16_file_gives_a_report_of_its_prompts(capsys, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("To be, or not to be.\nThe king is dead.\n", encoding="utf-16")
    code = cli.main(["heads", "--prompts", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--strict"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "out" / "interp-toy" / "prompts" / "report.json").read_text())
    assert data["protocol"]["n_sequences"] == 2 and data["protocol"]["n_tokens"] < 40


# ----- 5. non-finite scores are an error, never a report -----------------------------------------
def nan_report(**changes) -> HeadScoreReport:
    tables = {name: torch.full((2, 4), 0.5) for name in SCORE_TYPES}
    tables["induction"][0, 1] = float("nan")
    tables["induction"][1, 3] = float("inf")
    scores = HeadScores(tables, {name: 10 for name in SCORE_TYPES}, {"kind": "test"}, 1.0, 0.5)
    fields = dict(model_id="m", weights_sha256="0" * 64, config={}, processing={}, dtype="float16", device="cpu",
                  source="repeated", protocol={"kind": "test"}, prompts_sha256=None, scores=scores, versions={})
    fields.update(changes)
    return HeadScoreReport(**fields)


def test_non_finite_scores_are_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="induction") as error:
        report.write_report(nan_report(), tmp_path)
    message = str(error.value)
    assert "L0H1" in message and "L1H3" in message and "dtype" in message
    assert list(tmp_path.iterdir()) == []


def test_a_non_finite_loss_is_refused(tmp_path):
    good = nan_report()
    tables = {name: torch.full((2, 4), 0.5) for name in SCORE_TYPES}
    scores = HeadScores(tables, good.scores.n_queries, {}, float("nan"), 0.5)
    with pytest.raises(ValueError, match="loss"):
        report.write_report(nan_report(scores=scores), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_nan_weights_write_no_unit_and_no_report(tmp_path, monkeypatch):
    real_load = HookedTransformer.from_pretrained

    def load_with_nan_weights(*args, **kwargs):
        model = real_load(*args, **kwargs)
        with torch.no_grad():
            model.blocks[0].attn.W_QKV.fill_(float("nan"))
        return model

    monkeypatch.setattr(HookedTransformer, "from_pretrained", load_with_nan_weights)
    with pytest.raises(ValueError, match="(?i)non-finite") as error:
        batch.run(toy_job(tmp_path))
    assert "dtype" in str(error.value)
    folder = run_folder(tmp_path)
    assert not list(folder.glob("units/*.json")) and not (folder / "report.json").exists()


# ----- 9. a huge line is rejected before it is tokenised -------------------------------------------
def test_a_huge_line_is_rejected_without_tokenising_it(toy, monkeypatch):
    real_encode = toy.tokenizer.encode

    def guarded_encode(text, *args, **kwargs):
        assert len(text) < 100_000, "a multi-megabyte line reached the tokenizer"
        return real_encode(text, *args, **kwargs)

    monkeypatch.setattr(toy.tokenizer, "encode", guarded_encode)
    sequences, problems = batch.tokenize_prompts(toy, [(1, "word " * 600_000), (2, "The king is dead.")])
    assert len(sequences) == 1 and [number for number, _ in problems] == [1]
    assert "characters" in problems[0][1] and "n_ctx=256" in problems[0][1]


def test_a_line_that_could_fit_is_still_tokenised_and_measured(toy):
    sequences, problems = batch.tokenize_prompts(toy, [(1, "word " * 400)])
    assert sequences == [] and "tokens, longer than the model's context n_ctx=256" in problems[0][1]


# ----- 10. identical runs give identical pages -----------------------------------------------------
def test_identical_runs_give_byte_identical_html(tmp_path):
    (first,) = batch.run(toy_job(tmp_path / "first", formats=("html",)))
    (second,) = batch.run(toy_job(tmp_path / "second", formats=("html",)))
    assert first.files["html"].read_bytes() == second.files["html"].read_bytes()


# ----- 11. the report files are one set ------------------------------------------------------------
def test_a_failed_render_leaves_the_old_set_untouched(tmp_path, monkeypatch):
    report.write_report(nan_report(scores=HeadScores({n: torch.zeros(2, 4) for n in SCORE_TYPES},
                                                     {n: 1 for n in SCORE_TYPES})), tmp_path)
    old = snapshot(tmp_path)
    monkeypatch.setattr(report, "to_html", lambda *args: (_ for _ in ()).throw(RuntimeError("render failed")))
    new = nan_report(scores=HeadScores({n: torch.ones(2, 4) for n in SCORE_TYPES}, {n: 1 for n in SCORE_TYPES}))
    with pytest.raises(RuntimeError, match="render failed"):
        report.write_report(new, tmp_path)
    assert snapshot(tmp_path) == old
    assert HeadScoreReport.from_json(tmp_path / "report.json").scores["induction"].sum() == 0


def test_a_set_written_half_way_is_seen_as_incomplete_and_resume_repairs_it(tmp_path, monkeypatch):
    real_write = files.write_atomic

    def failing_write(path, content):
        if Path(path).name == "report.html":
            raise OSError("disk full")
        return real_write(path, content)

    monkeypatch.setattr(files, "write_atomic", failing_write)
    with pytest.raises(OSError, match="disk full"):
        batch.run(toy_job(tmp_path, formats=report.FORMATS))
    folder = run_folder(tmp_path)
    assert (folder / "report.json").exists() and not (folder / "report.html").exists()
    with pytest.raises(ValueError, match="incomplete") as error:
        HeadScoreReport.from_json(folder / "report.json")
    assert "--resume" in str(error.value)
    monkeypatch.setattr(files, "write_atomic", real_write)
    (outcome,) = batch.run(toy_job(tmp_path, resume=True, formats=report.FORMATS))
    assert (folder / "report.html").exists()
    assert HeadScoreReport.from_json(folder / "report.json").protocol["seed"] == 0
    inodes = {path.name: path.stat().st_ino for path in folder.iterdir() if path.is_file()}
    (again,) = batch.run(toy_job(tmp_path, resume=True, formats=report.FORMATS))  # complete: nothing rewritten
    assert {path.name: path.stat().st_ino for path in folder.iterdir() if path.is_file()} == inodes
    assert again.report.protocol["seed"] == 0 and set(again.files) == set(report.FORMATS)
    top_k = toy_job(tmp_path).top_k + 1  # the same run asked for a longer list: the set is rewritten
    batch.run(toy_job(tmp_path, resume=True, formats=report.FORMATS, top_k=top_k))
    assert (folder / "summary.md").stat().st_ino != inodes["summary.md"]
    assert json.loads((folder / "report.complete.json").read_text())["top_k"] == top_k


def test_a_changed_report_file_makes_the_set_incomplete(tmp_path):
    (outcome,) = batch.run(toy_job(tmp_path, formats=("json", "md")))
    outcome.files["md"].write_text("edited by hand\n")
    with pytest.raises(ValueError, match="summary.md"):
        HeadScoreReport.from_json(outcome.files["json"])


# ----- 12. a different run never deletes a finished one without --overwrite -------------------------
def test_a_different_run_does_not_destroy_a_finished_one(tmp_path):
    batch.run(toy_job(tmp_path, seed=0))
    folder = run_folder(tmp_path)
    finished = snapshot(folder)
    with pytest.raises(BaseException) as error:  # BaseException: the run would die after one unit
        batch.run(toy_job(tmp_path, seed=1), stop_after=1)
    assert isinstance(error.value, ValueError) and "--overwrite" in str(error.value)
    assert str(folder) in str(error.value)
    assert snapshot(folder) == finished
    assert HeadScoreReport.from_json(folder / "report.json").protocol["seed"] == 0
    (replaced,) = batch.run(toy_job(tmp_path, seed=1, overwrite=True))
    assert replaced.report.protocol["seed"] == 1
    assert HeadScoreReport.from_json(folder / "report.json").protocol["seed"] == 1


def test_overwrite_is_in_the_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["heads", "--help"])
    assert "--overwrite" in capsys.readouterr().out


# ----- 13. temp files of a killed run are removed on start --------------------------------------------
def test_temp_files_of_a_killed_run_are_removed(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        batch.run(toy_job(tmp_path), stop_after=2)
    folder = run_folder(tmp_path)
    stale = [folder / "units" / ".00002.json.0123abcd.tmp", folder / ".report.json.89abcdef.tmp"]
    for path in stale:
        path.write_text("half a file")
    batch.run(toy_job(tmp_path, resume=True))
    assert not list(folder.rglob("*.tmp"))


# ----- 14. damaged files name themselves and the fix ------------------------------------------------
@pytest.mark.parametrize("damage", [b"", b'{"sums": {"induction": [[0.1', b"\xff\xfe"])
def test_a_damaged_unit_names_the_file_and_the_fix(tmp_path, damage):
    with pytest.raises(KeyboardInterrupt):
        batch.run(toy_job(tmp_path), stop_after=2)
    unit = run_folder(tmp_path) / "units" / "00001.json"
    unit.write_bytes(damage)
    with pytest.raises(ValueError) as error:
        batch.run(toy_job(tmp_path, resume=True))
    message = str(error.value)
    assert str(unit) in message and "damaged" in message and "--resume" in message


def test_a_damaged_manifest_names_the_file_and_does_not_block_overwrite(tmp_path):
    batch.run(toy_job(tmp_path))
    manifest = run_folder(tmp_path) / "manifest.json"
    manifest.write_text("{")
    for resume in (False, True):
        with pytest.raises(ValueError) as error:
            batch.run(toy_job(tmp_path, resume=resume))
        assert str(manifest) in str(error.value) and "--overwrite" in str(error.value)
    (outcome,) = batch.run(toy_job(tmp_path, overwrite=True))
    assert outcome.report is not None and json.loads(manifest.read_text())["protocol"]["seed"] == 0


# ----- 15. every option is checked before a model loads ------------------------------------------------
BAD_OPTIONS = [
    (["--device", "cuda"], "--device"), (["--device", "gpu0"], "--device"), (["--device", "mps"], "--device"),
    (["--device", "cuda:7"], "--device"), (["--top-k", "-3"], "--top-k"), (["--format", "pdf"], "pdf"),
    (["--format", ""], "--format"), (["--length", "0"], "--length"), (["--random-repeated", "-1"], "--random-repeated"),
    (["--dtype", "float8"], "float8"), (["--batch-size", "0"], "--batch-size"), (["--unit-size", "0"], "--unit-size"),
]


@pytest.mark.parametrize("options, named", BAD_OPTIONS, ids=[" ".join(o) for o, _ in BAD_OPTIONS])
def test_bad_options_fail_in_one_line_before_loading(capsys, tmp_path, monkeypatch, options, named):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(loading, "load_weights", no_load)
    out = tmp_path / "out"
    arguments = ["heads", "--random-repeated", "4", "--length", "5", "--no-progress", "--out", str(out)]
    code = cli.main(arguments + options)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("interp heads: error: ") and named in lines[0]
    assert not out.exists()


def test_strict_fails_before_anything_is_written(capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a good prompt\n\nanother good prompt\n")
    out = tmp_path / "out"
    code = cli.main(["heads", "--prompts", str(prompts), "--random-repeated", "4", "--length", "5", "--strict",
                     "--no-progress", "--out", str(out)])
    assert code == 2 and "prompts.txt:2: empty line" in capsys.readouterr().err
    assert not out.exists()


# ----- 16. line endings and JSONL file names --------------------------------------------------------
@pytest.mark.parametrize("content", [b"one\rtwo\rthree\r", b"one\r\ntwo\nthree", b"one\rtwo\r\nthree\n"])
def test_every_line_ending_splits_prompts(tmp_path, content):
    path = tmp_path / "prompts.txt"
    path.write_bytes(content)
    assert batch.read_prompts(path) == ([(1, "one"), (2, "two"), (3, "three")], [])


@pytest.mark.parametrize("name", ["prompts.JSONL", "prompts.Jsonl", "prompts.json", "prompts.JSON"])
def test_jsonl_is_recognised_whatever_the_suffix_case(tmp_path, name):
    path = tmp_path / name
    path.write_text('{"text": "a"}\r"b"\r\n{"prompt": "c"}\n')
    assert batch.read_prompts(path) == ([(1, "a"), (2, "b"), (3, "c")], [])


def test_a_json_array_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text('[\n "a",\n "b"\n]\n')
    with pytest.raises(ValueError, match="one JSON value per line") as error:
        batch.read_prompts(path)
    assert str(path) in str(error.value)


# ----- 17. Ctrl-C says what was saved and how to resume -------------------------------------------------
def test_ctrl_c_says_what_was_saved_and_how_to_resume(capsys, tmp_path, monkeypatch):
    real_run = batch.run
    monkeypatch.setattr(batch, "run", lambda job: real_run(job, stop_after=1))
    code = cli.main(["heads", *TINY, "--out", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(lines) == 1, lines
    assert str(run_folder(tmp_path)) in lines[0] and "1 of 4 units" in lines[0] and "--resume" in lines[0]
    monkeypatch.setattr(batch, "run", real_run)
    assert cli.main(["heads", *TINY, "--out", str(tmp_path), "--resume"]) == 0


def test_a_bad_second_model_fails_before_the_first_writes_anything(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["heads", "--random-repeated", "4", "--length", "5", "--no-progress", "--out", str(out),
                     "--model", "interp-toy", "--model", str(tmp_path / "no-such-model")])
    assert code == 2 and "No such file or directory" in capsys.readouterr().err
    assert not out.exists()
