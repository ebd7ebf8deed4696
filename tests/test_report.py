"""Reports and batch runs: files parse back, writes are atomic, resume and shards give the same report."""

import csv
import json
import re

import pytest
import torch

from interp import batch
from interp.report import HeadScoreReport, write_atomic


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from interp.testing import hf_config, random_hf_gpt2

    directory = tmp_path_factory.mktemp("tiny_model")
    config = hf_config(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=101, initializer_range=0.3)
    random_hf_gpt2(config, seed=0).save_pretrained(directory)
    return directory


def job(model_dir, out, **overrides):
    settings = dict(models=(str(model_dir),), random_repeated=40, length=12, unit_size=8, batch_size=4,
                    out_dir=out, progress=False)
    settings.update(overrides)
    return batch.HeadsJob(**settings)


def report_files(outcome):
    return {fmt: path.read_bytes() for fmt, path in outcome.files.items() if fmt != "html"}


def test_files_parse_back(tiny_model_dir, tmp_path):
    (outcome,) = batch.run(job(tiny_model_dir, tmp_path))
    assert outcome.units_done == outcome.units_total == 5
    report = outcome.report
    with open(outcome.files["csv"], newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["layer", "head", "score_type", "value"]
    assert len(rows) == 2 * 4 * 3
    for row in rows:
        assert float(row["value"]) == float(report.scores[row["score_type"]][int(row["layer"]), int(row["head"])])
    data = json.loads(outcome.files["json"].read_text())
    for key in ("schema_version", "model_id", "weights_sha256", "config", "processing", "dtype", "device",
                "prompts_sha256", "protocol", "versions", "scores", "loss_first_repeat"):
        assert key in data, key
    assert data["protocol"]["seed"] == 0 and data["protocol"]["length"] == 12 and data["protocol"]["n_sequences"] == 40
    assert set(data["versions"]) >= {"interp", "torch", "transformers", "python"}
    assert re.fullmatch(r"[0-9a-f]{64}", data["weights_sha256"])
    back = HeadScoreReport.from_json(outcome.files["json"])
    for name in report.scores.scores:
        assert torch.equal(back.scores[name], report.scores[name])
    summary = outcome.files["md"].read_text()
    assert "Top induction heads" in summary and "loss on the first copy" in summary


def test_html_is_self_contained(tiny_model_dir, tmp_path):
    (outcome,) = batch.run(job(tiny_model_dir, tmp_path))
    page = outcome.files["html"].read_text()
    assert "data:image/png;base64," in page  # inline heatmaps
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"(?:https?:)?//[a-zA-Z0-9]", without_images)  # no URL of any scheme
    assert "<select" in page and "induction" in page


def test_resume_after_a_crash_gives_the_same_report(tiny_model_dir, tmp_path):
    (reference,) = batch.run(job(tiny_model_dir, tmp_path / "one_go"))
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        batch.run(job(tiny_model_dir, crashed), stop_after=2)
    folder = next(crashed.glob("*/repeated"))
    assert sorted(p.name for p in (folder / "units").iterdir()) == ["00000.json", "00001.json"]
    assert not (folder / "report.json").exists() and not list(folder.rglob("*.tmp"))
    before = (folder / "units" / "00000.json").stat().st_mtime_ns
    (resumed,) = batch.run(job(tiny_model_dir, crashed, resume=True))
    assert (folder / "units" / "00000.json").stat().st_mtime_ns == before  # finished work was kept
    assert report_files(resumed) == report_files(reference)


def test_shards_add_up_to_the_unsharded_report(tiny_model_dir, tmp_path):
    (reference,) = batch.run(job(tiny_model_dir, tmp_path / "whole"))
    (first,) = batch.run(job(tiny_model_dir, tmp_path / "sharded", shard=(1, 2)))
    assert first.report is None and first.units_done == 3
    (second,) = batch.run(job(tiny_model_dir, tmp_path / "sharded", shard=(2, 2)))
    assert second.units_done == 5
    assert report_files(second) == report_files(reference)


def test_resume_refuses_a_different_run(tiny_model_dir, tmp_path):
    batch.run(job(tiny_model_dir, tmp_path))
    with pytest.raises(ValueError, match="different run.*protocol"):
        batch.run(job(tiny_model_dir, tmp_path, seed=1, resume=True))
    with pytest.raises(ValueError, match="different run.*--overwrite"):
        batch.run(job(tiny_model_dir, tmp_path, seed=1))  # without --resume it is refused too...
    (fresh,) = batch.run(job(tiny_model_dir, tmp_path, seed=1, overwrite=True))  # ...unless --overwrite
    assert fresh.report.protocol["seed"] == 1


def test_bad_shard_is_refused():
    with pytest.raises(ValueError, match="--shard 3/2"):
        batch.HeadsJob(shard=(3, 2))


def test_write_atomic_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "report.json", "old")
    monkeypatch.setattr("os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_read_prompts_reports_every_bad_line(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_bytes(b"first prompt\n\n   \nbad \xff byte\nlast\n")
    prompts, problems = batch.read_prompts(text)
    assert prompts == [(1, "first prompt"), (5, "last")]
    assert [n for n, _ in problems] == [2, 3, 4] and "UTF-8" in problems[2][1]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"text": "a"}\n"b"\n{"prompt": "c"}\n{"other": 1}\nnot json\n')
    prompts, problems = batch.read_prompts(jsonl)
    assert prompts == [(1, "a"), (2, "b"), (3, "c")]
    assert [n for n, _ in problems] == [4, 5]
