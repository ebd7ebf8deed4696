"""The `interp` command line and scripts/head_scores.py (the same code), as a user runs them."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and "interp 0.1.0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["heads", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--shard" in out and "--resume" in out and "--random-repeated" in out


def test_info_prints_config_and_parameter_count(capsys):
    code, out, _ = run_cli(capsys, "info", "interp-toy")
    assert code == 0
    assert "n_layers            2" in out and "parameters" in out and "GPT2Tokenizer" in out


def test_bad_model_name_suggests_and_explains_offline_use(capsys):
    code, _, err = run_cli(capsys, "heads", "--model", "gtp2", "--no-progress", "--out", "unused")
    assert code == 2 and "Did you mean" in err and "'gpt2'" in err and "local directory" in err


def test_unreachable_hub_model_says_how_to_use_a_local_directory(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "info", "gpt2-xl")
    assert code == 2 and "local directory" in err


def test_empty_prompt_file(capsys, tmp_path):
    prompts = tmp_path / "empty.txt"
    prompts.write_text("")
    code, _, err = run_cli(capsys, "heads", "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 2 and "No usable prompts" in err and "empty" in err


def test_non_utf8_file(capsys, tmp_path):
    prompts = tmp_path / "latin1.txt"
    prompts.write_bytes("café au lait\nna\xefve\n".encode("latin-1"))
    code, _, err = run_cli(capsys, "heads", "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 2 and "line 1: not valid UTF-8" in err


def test_prompt_longer_than_context(capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("To be, or not to be, that is the question.\n" + "word " * 400 + "\nThe king is dead.\n")
    code, _, err = run_cli(capsys, "heads", "--prompts", str(prompts), "--out", str(tmp_path / "strict"),
                           "--no-progress", "--strict")
    assert code == 2 and "prompts.txt:2:" in err and "longer than the model's context n_ctx=256" in err
    code, out, err = run_cli(capsys, "heads", "--prompts", str(prompts), "--out", str(tmp_path / "lenient"),
                             "--no-progress")
    assert code == 0 and "prompts.txt:2:" in err and "(skipped)" in err
    assert "report:" in out and (tmp_path / "lenient" / "interp-toy" / "prompts" / "report.html").exists()


def test_main_job_on_the_bundled_model(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "heads", "--out", str(tmp_path), "--no-progress", "--random-repeated", "32")
    assert code == 0
    assert "induction" in out and "previous_token" in out and "loss first copy" in out
    assert (tmp_path / "interp-toy" / "repeated" / "report.html").exists()


def test_script_is_the_cli():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "head_scores.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--shard" in result.stdout


@pytest.mark.parametrize("case", ["neox_parallel", "llama_gqa", "mistral_window", "qwen2_bias"])
def test_info_and_heads_on_every_family_directory(capsys, tmp_path, case):
    """`interp info DIR` and `interp heads --model DIR` on a saved random model of each family; the report's
    scores equal the definition applied to transformers' own attention patterns."""
    import json

    import families
    from interp.analysis.heads import repeated_random_tokens
    from test_heads import direct_repeated_scores

    directory = families.saved_dir(case)
    code, out, _ = run_cli(capsys, "info", str(directory))
    assert code == 0 and f"model_type          {families.family(case)}" in out and "rotary" in out
    code, out, _ = run_cli(capsys, "heads", "--model", str(directory), "--out", str(tmp_path), "--no-progress",
                           "--random-repeated", "4", "--length", "10")
    assert code == 0 and "induction" in out
    report = json.loads(next(tmp_path.glob("*/repeated/report.json")).read_text())
    protocol = report["protocol"]
    hf = families.hf_model(case)
    tokens = repeated_random_tokens(hf.config.vocab_size, protocol["n_sequences"], protocol["length"], protocol["seed"],
                                    bos_token_id=report["config"]["bos_token_id"])
    with torch.no_grad():
        attentions = hf(tokens, output_attentions=True).attentions
    expected = direct_repeated_scores(attentions, protocol["length"])
    for name, values in expected.items():
        assert torch.allclose(torch.tensor(report["scores"][name], dtype=torch.float64), values, atol=1e-6), name


def test_heads_on_the_bundled_llama_model(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "heads", "--model", "interp-toy-llama", "--out", str(tmp_path), "--no-progress",
                           "--random-repeated", "16")
    assert code == 0 and "L1H3" in out and "L0H1" in out  # its induction and previous-token heads (model card)
    assert (tmp_path / "interp-toy-llama" / "repeated" / "report.html").exists()
