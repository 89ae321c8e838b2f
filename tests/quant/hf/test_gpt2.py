"""GPT-2 folders: a small GPT-2 trained here (byte-level BPE, torch), imported, against `transformers`.

The float reference is ``GPT2LMHeadModel`` itself, loaded from the very folder
that was imported. Nothing is downloaded: the tokenizer and the model are
trained in the fixture on the built-in corpus (seeded, CPU).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import aivm_jax
from aivm_jax import InputRangeError, ProgramError
from aivm_jax.cli import main
from aivm_jax.models._char_gpt import load_corpus
from aivm_jax.quant.hf import HfImportError, import_folder
from aivm_jax.quant.hf._gpt2 import Gpt2Config, gpt2_float_logits, gpt2_program, read_gpt2_weights

from ._tiny_gpt2 import CONTEXT, heldout_windows, trained_gpt2

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

pytestmark = pytest.mark.slow

PROMPTS = [
    "The ",
    "def f(x):\n    return",
    "A class definition",
    "If the",
    "Exceptions are raised when an error",
    "x",
    "for item in ",
    'The "import" statement',
]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """``(folder, float model, tokenizer)``: a 2-layer GPT-2 trained briefly on the built-in corpus,
    saved with ``save_pretrained`` next to its ``tokenizer.json``."""
    model, tokenizer = trained_gpt2()
    folder = tmp_path_factory.mktemp("gpt2") / "tiny-gpt2"
    model.save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder, model, tokenizer


@pytest.fixture(scope="module")
def imported(gpt2, tmp_path_factory):
    """``(program, path)``: the folder imported by `import_folder`, saved and loaded back."""
    program = import_folder(gpt2[0])
    path = tmp_path_factory.mktemp("gpt2-program") / "tiny-gpt2.aivm"
    aivm_jax.save(program, path)
    return aivm_jax.load(path), path


def _feeds(program, tokens, mask=None, past=None):
    """Program feeds for ``(B, T)`` tokens at positions ``0..T-1`` (or after ``past``'s slots)."""
    b, t = tokens.shape
    layers = program.metadata["layers"]
    heads, _, dh = {s.name: s for s in program.inputs}["past_k.0"].shape
    if past is None:
        past = {f"past_{c}.{i}": np.zeros((b, heads, 1, dh), np.int8) for i in range(layers) for c in "kv"}
        past["past_mask"] = np.zeros((b, 1), np.int8)
        start = np.zeros(b, np.int32)
    else:
        start = past["past_mask"].sum(1).astype(np.int32)
    return {
        "tokens": tokens.astype(np.int32),
        "positions": (start[:, None] + np.arange(t, dtype=np.int32)).astype(np.int32),
        "new_mask": np.ones((b, t), np.int8) if mask is None else mask,
        **past,
    }


def _float_argmax(model, windows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(windows, dtype=torch.long)).logits.numpy().argmax(-1)


def test_greedy_next_tokens_agree_with_transformers(gpt2, imported):
    folder, model, tokenizer = gpt2
    program, _ = imported
    windows = heldout_windows(tokenizer)
    reference = _float_argmax(model, windows)
    result = aivm_jax.infer(program, _feeds(program, windows))
    agreement = (result.named_outputs["next_token"] == reference).mean()
    assert agreement >= 0.95, agreement
    # the float model learnt something, so that agreeing with it means something
    assert (reference[:, :-1] == windows[:, 1:]).mean() >= 0.25
    report = program.metadata["lm_fidelity"]
    assert report["agreement_ppm"] >= 950_000, report
    assert report["perplexity_ratio_ppm"] <= 1_050_000, report
    assert program.metadata["context"] == CONTEXT
    assert program.metadata["tokenizer"] == (folder / "tokenizer.json").read_text()


def test_numpy_float_model_is_transformers(gpt2):
    folder, model, tokenizer = gpt2
    cfg = Gpt2Config.from_hf(json.loads((folder / "config.json").read_text()), folder)
    windows = heldout_windows(tokenizer, count=4)
    with torch.no_grad():
        expected = model(torch.tensor(windows, dtype=torch.long)).logits.numpy()
    got = gpt2_float_logits(read_gpt2_weights(folder, cfg), cfg, windows)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)  # float32 vs float32, different order


def test_generate_same_tokens_cached_or_recomputed_alone_or_batched(gpt2, imported):
    _, _, tokenizer = gpt2
    program, _ = imported
    batched = aivm_jax.generate(program, PROMPTS, 16)
    recomputed = aivm_jax.generate(program, PROMPTS, 16, cache=False)
    assert batched.tokens == recomputed.tokens
    assert batched.token_hashes == recomputed.token_hashes
    for i in (0, 1, 5):
        alone = aivm_jax.generate(program, [PROMPTS[i]], 16)
        assert alone.tokens[0] == batched.tokens[i]
    assert all(len(t) == 16 for t in batched.tokens)
    assert len(set(batched.tokens)) > 1  # not one constant output
    assert list(batched.texts) == [
        tokenizer.decode(list(t), skip_special_tokens=False) for t in batched.tokens
    ]


def test_generation_ends_at_the_end_token(imported):
    program, _ = imported
    assert program.metadata["eos_token_id"] == 0  # the config's <|endoftext|>
    free = aivm_jax.generate(program, PROMPTS[:2], 12)
    end = free.tokens[0][4]  # a token row 0 makes at step 4, named the end token
    ended = program.with_metadata(eos_token_id=end)
    for cache in (True, False):
        got = aivm_jax.generate(ended, PROMPTS[:2], 12, cache=cache)
        for tokens, full in zip(got.tokens, free.tokens):
            cut = full.index(end) + 1 if end in full else len(full)
            assert tokens == full[:cut]
        assert got.token_hashes[0] == aivm_jax.generate(ended, PROMPTS[:1], 12).token_hashes[0]
    assert len(got.tokens[0]) <= 5
    assert aivm_jax.generate(ended, PROMPTS[:2], 12, stop_at_eos=False).tokens == free.tokens


@pytest.mark.parametrize(("eos", "kept"), [(5, 5), ([7, 9], 7), (50256, None), (True, None), (None, None)])
def test_the_end_token_comes_from_the_config_inside_the_vocabulary(eos, kept):
    from aivm_jax.quant.hf._gpt2 import _eos

    cfg = Gpt2Config.from_hf(
        {"n_embd": 8, "n_head": 2, "n_layer": 1, "n_positions": 8, "vocab_size": 64}, Path("x")
    )
    assert _eos({"eos_token_id": eos}, cfg) == ({} if kept is None else {"eos_token_id": kept})


def test_first_generated_token_is_the_float_models_greedy_choice(gpt2, imported):
    _, model, tokenizer = gpt2
    program, _ = imported
    result = aivm_jax.generate(program, PROMPTS, 1)
    expected = []
    for prompt in PROMPTS:
        ids = np.array([tokenizer.encode(prompt).ids])
        expected.append(int(_float_argmax(model, ids)[0, -1]))
    agree = sum(got[0] == want for got, want in zip(result.tokens, expected))
    assert agree >= len(PROMPTS) - 1, (result.tokens, expected)


def test_step_programs_jit_eager_reference_and_batch_invariance(gpt2, imported):
    _, _, tokenizer = gpt2
    program, _ = imported
    rows = [tokenizer.encode(p).ids for p in PROMPTS[:3]]
    width = 16
    tokens = np.zeros((3, width), np.int32)
    mask = np.zeros((3, width), np.int8)
    for r, row in enumerate(rows):
        tokens[r, : len(row)], mask[r, : len(row)] = row, 1
    prefill = _feeds(program, tokens, mask)
    # a decode step: each row's prompt in the cache (fixed slots, unused ones masked), one new token
    out = aivm_jax.infer(program, prefill).named_outputs
    layers = program.metadata["layers"]
    past = {"past_mask": np.zeros((3, 32), np.int8)}
    past["past_mask"][:, :width] = mask
    for i in range(layers):
        for c in "kv":
            heads, _, dh = out[f"new_{c}.{i}"].shape[1:]
            cache = np.zeros((3, heads, 32, dh), np.int8)
            cache[:, :, :width] = out[f"new_{c}.{i}"]
            past[f"past_{c}.{i}"] = cache
    step = _feeds(program, out["next_token"][np.arange(3), mask.sum(1) - 1][:, None], past=past)
    for feeds in (prefill, step):
        results = {mode: aivm_jax.infer(program, feeds, mode=mode) for mode in ("jit", "eager", "reference")}
        for name in results["jit"].named_outputs:
            np.testing.assert_array_equal(
                results["jit"].named_outputs[name], results["reference"].named_outputs[name]
            )
            np.testing.assert_array_equal(
                results["eager"].named_outputs[name], results["reference"].named_outputs[name]
            )
        assert len({r.output_hash for r in results.values()}) == 1
        together = results["jit"].row_hashes
        for r in range(3):
            alone = aivm_jax.infer(program, {k: v[r : r + 1] for k, v in feeds.items()})
            assert alone.row_hashes[0] == together[r]


def test_cli_generate(imported):
    program, path = imported
    runner = CliRunner()
    done = runner.invoke(
        main,
        ["generate", str(path), "--prompt", "The ", "--prompt", "def ", "--max-new-tokens", "6", "--json"],
    )
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    expected = aivm_jax.generate(program, ["The ", "def "], 6)
    assert data["model_id"] == program.model_id
    assert [r["tokens"] for r in data["results"]] == [list(t) for t in expected.tokens]
    assert [r["text"] for r in data["results"]] == list(expected.texts)
    with pytest.raises(InputRangeError, match="context"):
        aivm_jax.generate(program, [load_corpus()[2][:2000]], 4)
    info = runner.invoke(main, ["info", str(path)])
    assert info.exit_code == 0, info.output
    assert "next-token agreement" in info.output


# ------------------------------------------------------------------ bad input


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"activation_function": "relu"}, "activation_function 'relu' is not supported"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=true"),
        ({"add_cross_attention": True}, "add_cross_attention=true"),
        ({"n_head": 3}, "not a multiple of n_head 3"),
        ({"n_layer": 3}, "lack 12 tensor(s)"),
        ({"n_embd": 96, "n_head": 4}, "has shape"),
    ],
)
def test_unsupported_configs_are_one_line_errors(gpt2, tmp_path, changes, message):
    folder = _copy(gpt2[0], tmp_path)
    _edit_config(folder, **changes)
    with pytest.raises(HfImportError) as caught:
        import_folder(folder)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_weights_and_files_are_one_line_errors(gpt2, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = _copy(gpt2[0], tmp_path)
    weights = load_file(folder / "model.safetensors")
    dropped = next(k for k in weights if k.endswith("h.1.mlp.c_fc.weight"))
    save_file({k: v for k, v in weights.items() if k != dropped}, folder / "model.safetensors")
    with pytest.raises(HfImportError) as caught:
        import_folder(folder)
    assert "h.1.mlp.c_fc.weight" in str(caught.value) and "\n" not in str(caught.value)

    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(HfImportError, match="not a readable safetensors file") as caught:
        import_folder(folder)
    assert "\n" not in str(caught.value)

    (folder / "model.safetensors").unlink()
    with pytest.raises(HfImportError, match="has no model.safetensors"):
        import_folder(folder)

    folder = _copy(gpt2[0], tmp_path / "second")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(HfImportError, match="has no tokenizer.json"):
        import_folder(folder)


def test_context_is_the_longest_within_the_opset_bounds(monkeypatch):
    """A config whose full ``n_positions`` is over the work bound gets the longest multiple of 64 that fits."""
    import aivm_jax.program._program as program_module

    rng = np.random.default_rng(0)
    cfg = Gpt2Config(layers=1, width=32, heads=2, positions=512, vocab=300, inner=64, eps=1e-5, tied=True)
    weights = {}
    for name, shape in cfg.weight_shapes().items():
        gamma = len(shape) == 1 and name.endswith(".weight")  # layer norm scales near 1
        weights[name] = (rng.normal(size=shape) * (0.02 if len(shape) > 1 else 0.1) + gamma).astype(
            np.float32
        )
    calibration = rng.integers(0, cfg.vocab, (2, 32)).astype(np.int32)
    full = gpt2_program(weights, cfg, calibration, name="synthetic")
    assert full.metadata["context"] == 512
    limit = full.resource_estimate(1, _shapes(full, 300)).work
    monkeypatch.setattr(program_module, "MAX_WORK_PER_ROW", limit)
    fitted = gpt2_program(weights, cfg, calibration, name="synthetic")
    assert fitted.metadata["context"] == 256  # 300 fits, 320 does not; 256 is the multiple of 64 below
    assert {s.name: s for s in fitted.inputs}["positions"].bounds == (0, 255)
    with pytest.raises(HfImportError, match="context 320"):
        gpt2_program(weights, cfg, calibration, name="synthetic", context=320)
    with pytest.raises(HfImportError, match="context must be"):
        gpt2_program(weights, cfg, calibration, name="synthetic", context=1024)
    assert issubclass(HfImportError, ValueError) and not issubclass(HfImportError, ProgramError)


def _shapes(program, length: int) -> dict[str, tuple[int, ...]]:
    return {
        s.name: tuple(length if a in s.dynamic else d for a, d in enumerate(s.shape)) for s in program.inputs
    }
