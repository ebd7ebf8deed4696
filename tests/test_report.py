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


# ----- what the report pages show ----------------------------------------------------------------
from interp import report as report_module  # noqa: E402
from interp.analysis.heads import HeadScores  # noqa: E402
from interp.report import TOP_SCORE, example_patterns, to_csv, to_html, to_markdown  # noqa: E402

REPEATED = {"kind": "repeated_random_tokens", "n_sequences": 8, "length": 10, "seed": 0, "bos": True}


def make_report(tables, n_queries, protocol=REPEATED, example=None):
    scores = HeadScores({name: torch.tensor(table) for name, table in tables.items()}, n_queries, protocol)
    return HeadScoreReport(model_id="toy", weights_sha256="0" * 64, config={}, processing={}, dtype="float32",
                           device="cpu", source="repeated", protocol=protocol, prompts_sha256=None, scores=scores,
                           versions={"interp": "test"}, example=example)


TABLES = {"induction": [[0.06, 0.05], [0.15, 0.96]], "previous_token": [[0.97, 0.19], [0.11, 0.05]],
          "duplicate_token": [[0.0, 0.0], [0.0, 0.0]]}
QUERIES = {"induction": 80, "previous_token": 160, "duplicate_token": 0}


def section(markdown: str, name: str) -> str:
    return markdown.split(f"## Top {name} heads")[1].split("##")[0]


def test_unmeasured_scores_are_na_and_unranked():
    report = make_report(TABLES, QUERIES)
    duplicate = section(to_markdown(report), "duplicate-token")
    assert "n/a (0 queries)" in duplicate and "| 1 |" not in duplicate and "L0H0" not in duplicate
    page = to_html(report)
    assert page.count("n/a (0 queries)") == 1
    assert page.count("scores, layers by heads") == 2  # heatmaps of the two measured score types only
    rows = [line.split(",") for line in to_csv(report).splitlines()[1:]]
    assert {value for _, _, name, value in rows if name == "duplicate_token"} == {""}  # missing, not 0.0
    induction = sorted(float(value) for _, _, name, value in rows if name == "induction")
    assert induction == pytest.approx([0.05, 0.06, 0.15, 0.96], abs=1e-7)  # float32 tables


def test_only_heads_above_the_threshold_are_listed():
    markdown = to_markdown(make_report(TABLES, QUERIES))
    assert TOP_SCORE == 0.3 and "(score ≥ 0.3)" in markdown
    induction = section(markdown, "induction")
    assert "| 1 | L1H1 | 0.960 |" in induction and "L1H0" not in induction  # 0.15 is below the threshold
    weak = make_report({"induction": [[0.06, 0.1]]}, {"induction": 5})
    assert "No head scores 0.3 or more; the highest is L0H1 at 0.100." in to_markdown(weak)
    assert "No head scores 0.3 or more" in to_html(weak)


def test_counts_agree_with_their_nouns():
    one = make_report(TABLES, QUERIES, {"kind": "text", "n_sequences": 1, "n_tokens": 1, "n_skipped": 1})
    assert "1 prompt, 1 token (1 line skipped)" in to_markdown(one)
    many = make_report(TABLES, QUERIES, {"kind": "text", "n_sequences": 3, "n_tokens": 40, "n_skipped": 2})
    assert "3 prompts, 40 tokens (2 lines skipped)" in to_html(many)
    repeated = make_report(TABLES, QUERIES, {**REPEATED, "n_sequences": 1, "length": 1})
    assert "1 sequence of BOS + 1 random token repeated twice" in to_markdown(repeated)


@pytest.fixture(scope="module")
def tiny_model():
    from interp import HookedTransformer
    from interp.testing import hf_config, random_hf_gpt2

    config = hf_config(n_layer=2, n_head=2, n_embd=16, n_positions=64, vocab_size=101)
    return HookedTransformer.from_pretrained(random_hf_gpt2(config, seed=0))


def test_example_shows_every_head_and_opens_on_the_strongest(tiny_model):
    scores = make_report(TABLES, QUERIES).scores
    example = example_patterns(tiny_model, torch.arange(12), scores, 5, "caption")
    assert list(example["patterns"]) == ["L0H0 previous_token 0.97", "L0H1", "L1H0", "L1H1 induction 0.96"]
    assert example["selected"] == "L0H0 previous_token 0.97" and example["shown"] == "every head"
    page = to_html(make_report(TABLES, QUERIES, example=example))
    assert '<option value="0" selected>L0H0 previous_token 0.97</option>' in page


def test_example_keeps_the_listed_heads_when_every_head_does_not_fit(tiny_model, monkeypatch):
    monkeypatch.setattr(report_module, "MAX_VIEW_CELLS", 3 * 12 * 13 // 2)  # room for 3 of the 4 heads
    scores = make_report(TABLES, QUERIES).scores
    example = example_patterns(tiny_model, torch.arange(12), scores, 5, "caption")
    assert list(example["patterns"]) == ["L0H0 previous_token 0.97", "L1H1 induction 0.96"]
    assert example["shown"] == "the strongest and the listed heads"


def test_report_html_is_bounded_at_1024_tokens():
    """The report module docstring's bound: under 7.5 MB, here with 9 heads of 1,024 tokens and GPT-2 small maps."""
    n = 1024
    generator = torch.Generator().manual_seed(0)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    patterns = {f"L{i}H0": torch.randn(n, n, generator=generator).masked_fill(~causal, float("-inf")).softmax(-1)
                for i in range(9)}
    example = {"str_tokens": [f" t{i}" for i in range(n)], "patterns": patterns, "caption": "", "selected": "L3H0"}
    tables = {name: torch.rand(12, 12, generator=generator).tolist() for name in ("induction", "previous_token")}
    page = to_html(make_report(tables, {"induction": 100, "previous_token": 100}, example=example))
    assert len(page.encode("utf-8")) < 7_500_000


def test_weights_hash_counts_a_tied_view_once_but_every_slice_of_a_flat_buffer():
    from interp.report import weights_sha256

    class Flat(torch.nn.Module):
        def __init__(self, buffer):
            super().__init__()
            self.a = torch.nn.Parameter(buffer[:6].view(2, 3))
            self.b = torch.nn.Parameter(buffer[6:].view(2, 3))

    class Tied(torch.nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.W_E = torch.nn.Parameter(weight)
            self.W_U = torch.nn.Parameter(weight.T)

    buffer = torch.arange(12.0)
    changed = buffer.clone()
    changed[9] = -1.0  # only in b
    assert weights_sha256(Flat(buffer)) != weights_sha256(Flat(changed))
    weight = torch.randn(4, 3)
    tied, alone = Tied(weight), torch.nn.Module()
    alone.W_E = torch.nn.Parameter(weight)
    assert weights_sha256(tied) == weights_sha256(alone)  # W_U adds nothing: it is W_E
