"""Hugging Face BERT and GPT-2 through PyTorch's ONNX exporter (TorchScript) into `import_onnx`.

The models are `transformers`' own, made here: a ``BertModel`` with seeded random
weights (drawn wide, as in ``tests/quant/hf/test_bert.py``, so that attention is
far from uniform and padding matters), and ``GPT2LMHeadModel``, the tiny GPT-2
trained on the built-in corpus that the folder importer's tests use
(``tests/quant/hf/_tiny_gpt2.py``). Both run with ``attn_implementation="eager"``
and are exported by ``torch.onnx.export(dynamo=False)``: transformers 5 builds
its attention masks from ``attention_mask`` by indexing it with the row indices
``Range(0, batch)``, which the importer must fold into the opset's masked
(and, for GPT-2, causal) softmax. The float reference is `transformers` itself.

Nothing is downloaded. The smallest graphs of the patterns these exports need
(GPT-2's ``Conv1D`` products and ``gelu_new``) are at the end.
"""

from __future__ import annotations

import io
import math
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

import aivm_jax  # noqa: E402
from aivm_jax.quant import OnnxImportError, UnsupportedOnnxError, import_onnx  # noqa: E402
from aivm_jax.runtime._host import decode_scale  # noqa: E402

from .hf._tiny_gpt2 import VOCAB as GPT2_VOCAB  # noqa: E402
from .hf._tiny_gpt2 import gpt2_config, heldout_windows, trained_gpt2  # noqa: E402

RNG = np.random.default_rng(0)  # reseeded for each test by tests/quant/conftest.py

BERT_VOCAB, BERT_T, BERT_LAYERS = 300, 16, 2
GPT2_T = 64
COSINE_BAR = 0.99
"""Encoders: mean cosine of the program's embeddings with transformers' on held-out rows."""
AGREEMENT_BAR = 0.95
"""Decoders: greedy next-token agreement with transformers on held-out text."""


class _LastHidden(nn.Module):
    """``BertModel``'s ``last_hidden_state`` (keywords: transformers 5's forward, traced by
    TorchScript with positional arguments, receives ``use_cache`` twice)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _Logits(nn.Module):
    """``GPT2LMHeadModel``'s logits over the whole sequence, without a KV cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def _export(module: nn.Module, example: dict[str, np.ndarray], opset: int, output: str) -> bytes:
    """The TorchScript export of ``module`` (put in eval mode first: the exporter restores the
    wrapper's mode afterwards, recursively, and a wrapper made in training mode would leave the
    transformers model with its dropout on)."""
    module.eval()
    buffer = io.BytesIO()
    names = ["input_ids", "attention_mask"]
    torch.onnx.export(
        module,
        tuple(torch.tensor(example[n]) for n in names),
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=names,
        output_names=[output],
        dynamic_axes={n: {0: "batch", 1: "seq"} for n in [*names, output]},
    )
    return buffer.getvalue()


def _real(program, result, name: str) -> np.ndarray:
    return result.named_outputs[name].astype(np.float64) * decode_scale(program.metadata["scales"][name])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _patterns(program) -> list[str]:
    return [p["pattern"] for p in program.metadata["source"]["patterns"]]


def _softmax_attrs(program) -> list[dict]:
    return [dict(node.attrs) for node in program.nodes if node.op == "softmax"]


def _battery(program, feeds: dict[str, np.ndarray]) -> None:
    """jit == eager == the NumPy reference, bit for bit; each row's hash alone or in any batch."""
    modes = {m: aivm_jax.infer(program, feeds, mode=m) for m in ("jit", "eager", "reference")}
    np.testing.assert_array_equal(modes["jit"].outputs, modes["reference"].outputs)
    np.testing.assert_array_equal(modes["eager"].outputs, modes["reference"].outputs)
    assert len({r.output_hash for r in modes.values()}) == 1
    rows = len(next(iter(feeds.values())))
    full = modes["jit"].row_hashes
    assert len(set(full)) == rows  # different rows, different outputs: the hashes say something
    for size in (1, 3, 5):
        for start in range(0, rows - size + 1, 4):
            part = {k: v[start : start + size] for k, v in feeds.items()}
            assert aivm_jax.infer(program, part).row_hashes == full[start : start + size]


# --------------------------------------------------------------------------- BERT


def _bert_rows(n: int, seed: int, *, min_length: int = 3) -> dict[str, np.ndarray]:
    """Random token rows, right-padded to ``BERT_T`` (padding tokens 0, as a tokenizer writes)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_length, BERT_T + 1, n)
    mask = (np.arange(BERT_T)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(1, BERT_VOCAB, (n, BERT_T)), 0)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def bert():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=BERT_VOCAB,
        hidden_size=64,
        num_hidden_layers=BERT_LAYERS,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        initializer_range=0.2,
        attn_implementation="eager",
    )
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "position_embeddings" in name or "token_type" in name:
                p.copy_(0.02 * torch.randn_like(p))
    return model


def _bert_float(model, rows: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(rows["input_ids"]), attention_mask=torch.tensor(rows["attention_mask"])
        ).last_hidden_state.numpy()


@pytest.fixture(scope="module")
def bert_onnx(bert) -> dict[int, bytes]:
    return {opset: _export(_LastHidden(bert), _bert_rows(2, 0), opset, "hidden") for opset in (17, 13)}


def _import_bert(data: bytes):
    return import_onnx(data, _bert_rows(80, 1), dims={"seq": BERT_T}, name="tiny-bert")


@pytest.fixture(scope="module")
def bert_program(bert_onnx):
    return _import_bert(bert_onnx[17])


def test_bert_mask_probe_without_onnxruntime_is_one_clear_error(bert_onnx, monkeypatch):
    """``onnx.reference`` cannot run transformers 5's mask graph; the importer says so and
    names the fix, instead of listing the mask's nodes as unsupported."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(OnnxImportError) as caught:
        _import_bert(bert_onnx[17])
    assert not isinstance(caught.value, UnsupportedOnnxError)
    message = str(caught.value)
    assert "attention-mask subgraph" in message and "onnx.reference" in message
    assert "aivm_jax[onnx]" in message and "\n" not in message


def _check_bert_program(program) -> None:
    report = program.metadata["onnx_fidelity"]
    assert report["held_out"] and report["examples"] == 16
    assert report["outputs"]["hidden"]["cosine_mean_ppm"] >= COSINE_BAR * 1e6, report
    patterns = _patterns(program)
    assert patterns.count("MaskedSoftmax(Add+Softmax, key mask from attention_mask)") == BERT_LAYERS
    assert patterns.count("Gelu(Div/Erf/Add/Mul/Mul)") == BERT_LAYERS
    assert sum(p.startswith("KeyMask(") and "Range" in p for p in patterns) == 1
    assert _softmax_attrs(program) == [{"causal": False, "out_bits": 15}] * BERT_LAYERS
    ops = program.op_counts()
    # only the word embeddings are gathered at run time: position and token-type rows fold
    assert ops["gather"] == 1 and ops["batch_matmul"] == 2 * BERT_LAYERS
    assert ops["layer_norm"] == 2 * BERT_LAYERS + 1
    assert [(s.name, s.dtype, s.shape, s.bounds) for s in program.inputs] == [
        ("input_ids", "int32", (BERT_T,), (0, BERT_VOCAB - 1)),
        ("attention_mask", "int8", (BERT_T,), (0, 1)),
    ]


def test_bert_embeddings_agree_with_transformers(bert, bert_program):
    _check_bert_program(bert_program)
    rows = _bert_rows(32, 2)
    want = _bert_float(bert, rows)
    got = _real(bert_program, aivm_jax.infer(bert_program, rows), "hidden")
    keep = rows["attention_mask"] == 1
    tokens = _cosines(got, want)[keep]
    m = keep[:, :, None].astype(np.float64)
    pooled = _cosines((got * m).sum(1) / m.sum(1), (want * m).sum(1) / m.sum(1))
    assert tokens.mean() >= COSINE_BAR and pooled.mean() >= COSINE_BAR, (tokens.mean(), pooled.mean())
    assert tokens.min() >= 0.95 and pooled.min() >= 0.98, (tokens.min(), pooled.min())
    # the embeddings tell rows apart: the bar is not met by a constant
    assert _cosines(want[:, 0], want[::-1, 0]).mean() < 0.9


@pytest.mark.slow
def test_bert_opset13_export_imports_within_the_bar(bert, bert_onnx):
    """At opset 13 the exporter writes LayerNorm as its ReduceMean/Sub/Pow/... chain."""
    program = _import_bert(bert_onnx[13])
    assert program.metadata["source"]["opset"] == 13
    _check_bert_program(program)
    assert sum(p.startswith("LayerNormalization(ReduceMean") for p in _patterns(program)) == 5
    rows = _bert_rows(16, 2)
    got = _real(program, aivm_jax.infer(program, rows), "hidden")
    keep = rows["attention_mask"] == 1
    assert _cosines(got, _bert_float(bert, rows))[keep].mean() >= COSINE_BAR


@pytest.mark.slow
def test_bert_sdpa_export_imports_within_the_bar(bert):
    """transformers' default ``sdpa`` attention exports ``Where(IsNaN(p), 0, p)`` after each
    softmax (a row with every key masked is NaN in float); the opset's softmax gives that row
    zeros, so the guard converts to nothing."""
    sdpa = transformers.BertModel(
        transformers.BertConfig(**{**bert.config.to_dict(), "attn_implementation": "sdpa"}),
        add_pooling_layer=False,
    )
    sdpa.load_state_dict(bert.state_dict())
    data = _export(_LastHidden(sdpa.eval()), _bert_rows(2, 0), 17, "hidden")
    assert "IsNaN" in {n.op_type for n in onnx.load_from_string(data).graph.node}
    program = _import_bert(data)
    _check_bert_program(program)
    assert _patterns(program).count("NanGuard(IsNaN/Where)") == BERT_LAYERS
    rows = _bert_rows(16, 2)
    got = _real(program, aivm_jax.infer(program, rows), "hidden")
    keep = rows["attention_mask"] == 1
    assert _cosines(got, _bert_float(bert, rows))[keep].mean() >= COSINE_BAR


def test_bert_padding_is_masked(bert, bert_program):
    rows = _bert_rows(12, 3, min_length=4)
    rows["attention_mask"][:, -2:] = 0  # every row padded
    keep = rows["attention_mask"] == 1
    out = aivm_jax.infer(bert_program, rows).outputs
    # what stands at the padded positions changes nothing at the real tokens, bit for bit
    noisy = dict(rows, input_ids=np.where(keep, rows["input_ids"], RNG.integers(1, BERT_VOCAB, keep.shape)))
    np.testing.assert_array_equal(aivm_jax.infer(bert_program, noisy).outputs[keep], out[keep])
    # and the mask is what makes it so: read as real tokens, the padding changes the real ones
    unmasked = dict(noisy, attention_mask=np.ones_like(rows["attention_mask"]))
    assert not np.array_equal(aivm_jax.infer(bert_program, unmasked).outputs[keep], out[keep])
    # each padded row's real tokens are transformers' run of the row without its padding
    got = _real(bert_program, aivm_jax.infer(bert_program, rows), "hidden")
    cosines = []
    for r in range(len(rows["input_ids"])):
        length = int(keep[r].sum())
        alone = {"input_ids": rows["input_ids"][r : r + 1, :length]}
        alone["attention_mask"] = np.ones_like(alone["input_ids"])
        cosines.extend(_cosines(got[r, :length], _bert_float(bert, alone)[0]))
    assert np.mean(cosines) >= COSINE_BAR and np.min(cosines) >= 0.95, (np.mean(cosines), np.min(cosines))


@pytest.mark.slow
def test_bert_program_is_deterministic(bert_program):
    rows = _bert_rows(13, 4)
    _battery(bert_program, rows)
    # any valid input, not only tokenizer-like rows: ids over the whole vocabulary, holes in the mask
    extreme = {
        "input_ids": RNG.integers(0, BERT_VOCAB, (7, BERT_T)),
        "attention_mask": RNG.integers(0, 2, (7, BERT_T)),
    }
    extreme["attention_mask"][:, 0] = 1
    np.testing.assert_array_equal(
        aivm_jax.infer(bert_program, extreme).outputs,
        aivm_jax.infer(bert_program, extreme, mode="reference").outputs,
    )


def test_bert_errors_are_one_line(bert_onnx):
    with pytest.raises(OnnxImportError, match="seq") as caught:
        import_onnx(bert_onnx[17], _bert_rows(8, 1), name="tiny-bert")  # the sequence length not bound
    assert "\n" not in str(caught.value)
    rows = _bert_rows(8, 1)
    rows["input_ids"][0, 0] = BERT_VOCAB
    with pytest.raises(OnnxImportError, match=rf"\[0, {BERT_VOCAB - 1}\]") as caught:
        import_onnx(bert_onnx[17], rows, dims={"seq": BERT_T})
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- GPT-2


def _gpt2_rows(tokenizer, n: int, seed: int) -> dict[str, np.ndarray]:
    """Windows of the training text; a quarter of them right-padded (padding tokens 0)."""
    from aivm_jax.models._char_gpt import load_corpus

    _, train_text, _ = load_corpus()
    ids = np.array(tokenizer.encode(train_text[:200_000]).ids)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - GPT2_T, n)
    windows = np.stack([ids[s : s + GPT2_T] for s in starts])
    lengths = np.where(rng.random(n) < 0.25, rng.integers(8, GPT2_T, n), GPT2_T)
    mask = (np.arange(GPT2_T)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": np.where(mask == 1, windows, 0), "attention_mask": mask}


@pytest.fixture(scope="module")
def gpt2():
    """``(model, tokenizer, onnx bytes)``: the tiny trained GPT-2 with eager attention, exported at
    opset 17 (the default ``sdpa`` attention has a test of its own)."""
    trained, tokenizer = trained_gpt2()
    torch.set_num_threads(1)
    model = transformers.GPT2LMHeadModel(gpt2_config(attn_implementation="eager"))
    model.load_state_dict(trained.state_dict())  # a copy: the trained model is shared
    model.eval()
    data = _export(_Logits(model), _gpt2_rows(tokenizer, 2, 0), 17, "logits")
    return model, tokenizer, data


@pytest.fixture(scope="module")
def gpt2_program(gpt2):
    _, tokenizer, data = gpt2
    return import_onnx(data, _gpt2_rows(tokenizer, 60, 1), dims={"seq": GPT2_T}, name="tiny-gpt2")


def _gpt2_float(model, rows: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(rows["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(rows["attention_mask"], dtype=torch.long),
        ).logits.numpy()


@pytest.mark.slow
def test_gpt2_greedy_next_tokens_agree_with_transformers(gpt2, gpt2_program):
    model, tokenizer, _ = gpt2
    program = gpt2_program
    windows = heldout_windows(tokenizer, 24, GPT2_T)
    rows = {"input_ids": windows, "attention_mask": np.ones_like(windows)}
    reference = _gpt2_float(model, rows).argmax(-1)
    got = aivm_jax.infer(program, rows).outputs.argmax(-1)
    agreement = (got == reference).mean()
    assert agreement >= AGREEMENT_BAR, agreement
    assert (got[:, -1] == reference[:, -1]).mean() >= 0.9  # the next token after each window
    # the float model learnt something, so that agreeing with it means something
    assert (reference[:, :-1] == windows[:, 1:]).mean() >= 0.25
    report = program.metadata["onnx_fidelity"]
    assert report["argmax_agreement"] >= AGREEMENT_BAR * report["outputs"]["logits"]["argmax_positions"]
    # the causal mask and the key mask became the opset's causal masked softmax
    patterns = _patterns(program)
    assert patterns.count("MaskedSoftmax(Add+Softmax, causal mask from attention_mask)") == 2
    assert sum(p.startswith("KeyMask(") for p in patterns) == 1
    assert _softmax_attrs(program) == [{"causal": True, "out_bits": 15}] * 2
    assert patterns.count("Gelu(tanh: Pow/Mul/Add/Mul/Tanh/Add/Mul/Mul)") == 2
    assert patterns.count("Linear(Reshape/Gemm/Reshape)") == 8  # c_attn, c_proj, c_fc, mlp.c_proj
    assert [(s.name, s.dtype, s.bounds) for s in program.inputs] == [
        ("input_ids", "int32", (0, GPT2_VOCAB - 1)),
        ("attention_mask", "int8", (0, 1)),
    ]


@pytest.mark.slow
def test_gpt2_opset13_export_imports_within_the_bar(gpt2):
    """At opset 13 shape inference loses every shape after the first attention mask (built from
    ``Range(0, batch)``); the importer finds them at two concrete batch sizes."""
    model, tokenizer, _ = gpt2
    data = _export(_Logits(model), _gpt2_rows(tokenizer, 2, 0), 13, "logits")
    program = import_onnx(data, _gpt2_rows(tokenizer, 60, 1), dims={"seq": GPT2_T}, name="tiny-gpt2")
    assert program.metadata["source"]["opset"] == 13
    windows = heldout_windows(tokenizer, 24, GPT2_T)
    rows = {"input_ids": windows, "attention_mask": np.ones_like(windows)}
    reference = _gpt2_float(model, rows).argmax(-1)
    agreement = (aivm_jax.infer(program, rows).outputs.argmax(-1) == reference).mean()
    assert agreement >= AGREEMENT_BAR, agreement
    assert _patterns(program).count("MaskedSoftmax(Add+Softmax, causal mask from attention_mask)") == 2
    assert _softmax_attrs(program) == [{"causal": True, "out_bits": 15}] * 2


@pytest.mark.slow
def test_gpt2_sdpa_export_imports_within_the_bar(gpt2):
    """The default ``sdpa`` attention: its NaN guards convert to nothing (see the BERT test)."""
    model, tokenizer, _ = gpt2
    sdpa = transformers.GPT2LMHeadModel(gpt2_config(attn_implementation="sdpa"))
    sdpa.load_state_dict(model.state_dict())
    data = _export(_Logits(sdpa.eval()), _gpt2_rows(tokenizer, 2, 0), 17, "logits")
    program = import_onnx(data, _gpt2_rows(tokenizer, 60, 1), dims={"seq": GPT2_T}, name="tiny-gpt2")
    patterns = _patterns(program)
    assert patterns.count("NanGuard(IsNaN/Where)") == 2
    assert patterns.count("MaskedSoftmax(Add+Softmax, causal mask from attention_mask)") == 2
    windows = heldout_windows(tokenizer, 24, GPT2_T)
    rows = {"input_ids": windows, "attention_mask": np.ones_like(windows)}
    reference = _gpt2_float(model, rows).argmax(-1)
    agreement = (aivm_jax.infer(program, rows).outputs.argmax(-1) == reference).mean()
    assert agreement >= AGREEMENT_BAR, agreement


@pytest.mark.slow
def test_gpt2_padding_is_masked(gpt2, gpt2_program):
    model, tokenizer, _ = gpt2
    windows = heldout_windows(tokenizer, 8, GPT2_T)
    full = {"input_ids": windows, "attention_mask": np.ones_like(windows)}
    out = aivm_jax.infer(gpt2_program, full).outputs
    # right padding: every real position equals the unpadded run, bit for bit (what follows a
    # token does not reach it), whatever stands at the padded positions
    lengths = np.array([9, 20, 33, 40, 47, 50, 58, 63])
    keep = np.arange(GPT2_T)[None, :] < lengths[:, None]
    padded = {
        "input_ids": np.where(keep, windows, RNG.integers(0, GPT2_VOCAB, windows.shape)),
        "attention_mask": keep.astype(np.int64),
    }
    np.testing.assert_array_equal(aivm_jax.infer(gpt2_program, padded).outputs[keep], out[keep])
    # left padding: the padded keys are masked; the real positions follow transformers
    left = keep[:, ::-1]
    shifted = {"input_ids": np.where(left, windows, 0), "attention_mask": left.astype(np.int64)}
    got = aivm_jax.infer(gpt2_program, shifted).outputs
    assert not np.array_equal(got[left], out[left])
    reference = _gpt2_float(model, shifted).argmax(-1)
    assert (got.argmax(-1)[left] == reference[left]).mean() >= AGREEMENT_BAR


@pytest.mark.slow
def test_gpt2_program_is_deterministic(gpt2, gpt2_program):
    _, tokenizer, _ = gpt2
    rows = _gpt2_rows(tokenizer, 9, 5)
    _battery(gpt2_program, rows)


# --------------------------------------------------------------------------- the patterns, smallest graphs


def _model(nodes, inits, row, out_row, opset=17):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *row])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *out_row])],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _batch_first(shape_of: str, rest: str, out: str) -> list:
    """``out = [shape_of.size(0), *rest]`` as PyTorch writes it: Shape -> Gather(0) -> Unsqueeze -> Concat."""
    return [
        helper.make_node("Shape", [shape_of], [f"{out}.shape"]),
        helper.make_node("Gather", [f"{out}.shape", "zero"], [f"{out}.b"], axis=0),
        helper.make_node("Unsqueeze", [f"{out}.b", "axis0"], [f"{out}.b1"]),
        helper.make_node("Concat", [f"{out}.b1", rest], [out], axis=0),
    ]


_SHAPE_INITS = [("zero", np.array(0, np.int64)), ("axis0", np.array([0], np.int64))]


@pytest.mark.parametrize("product", ["Gemm", "MatMul"])
def test_conv1d_product_is_one_linear(product):
    """``x.view(-1, K) @ W + b`` viewed back to ``(batch, T, N)`` (GPT-2's Conv1D) is one product."""
    t, k, n = 5, 6, 4
    w = RNG.normal(size=(k, n)).astype(np.float32) / math.sqrt(k)
    b = RNG.normal(size=n).astype(np.float32)
    if product == "Gemm":
        middle = [helper.make_node("Gemm", ["x2", "W", "b"], ["p"], transB=1)]
        inits = [("W", w.T.copy()), ("b", b)]
    else:
        middle = [
            helper.make_node("MatMul", ["x2", "W"], ["p0"]),
            helper.make_node("Add", ["p0", "b"], ["p"]),
        ]
        inits = [("W", w), ("b", b)]
    nodes = [
        *_batch_first("x", "tn", "back"),
        helper.make_node("Reshape", ["x", "flat"], ["x2"]),
        *middle,
        helper.make_node("Reshape", ["p", "back"], ["y"]),
    ]
    inits += [*_SHAPE_INITS, ("flat", np.array([-1, k], np.int64)), ("tn", np.array([t, n], np.int64))]
    program = import_onnx(_model(nodes, inits, [t, k], [t, n]), RNG.normal(size=(40, t, k)), name="conv1d")
    assert _patterns(program) == [f"Linear(Reshape/{'/'.join(n.op_type for n in middle)}/Reshape)"]
    assert program.op_counts()["matmul"] == 1 and "reshape" not in program.op_counts()
    assert program.metadata["onnx_fidelity"]["outputs"]["y"]["cosine_min_ppm"] >= 999_000


def _gelu_new(order: str, cubic: float = 0.044715) -> tuple[list, list]:
    """GPT-2's ``gelu_new`` of ``h``, as ``NewGELUActivation`` exports: the last two products in ``order``."""
    nodes = [
        helper.make_node("Pow", ["h", "three"], ["h3"]),
        helper.make_node("Mul", ["h3", "cubic"], ["h3c"]),
        helper.make_node("Add", ["h", "h3c"], ["inner"]),
        helper.make_node("Mul", ["inner", "scale"], ["z"]),
        helper.make_node("Tanh", ["z"], ["tz"]),
        helper.make_node("Add", ["tz", "one"], ["onep"]),
    ]
    if order == "half_x_first":  # (0.5 * x) * (1 + tanh)
        nodes += [
            helper.make_node("Mul", ["h", "half"], ["hh"]),
            helper.make_node("Mul", ["hh", "onep"], ["y"]),
        ]
    elif order == "x_first":  # (x * (1 + tanh)) * 0.5
        nodes += [
            helper.make_node("Mul", ["h", "onep"], ["xo"]),
            helper.make_node("Mul", ["xo", "half"], ["y"]),
        ]
    else:  # x * ((1 + tanh) * 0.5)
        nodes += [
            helper.make_node("Mul", ["onep", "half"], ["oh"]),
            helper.make_node("Mul", ["h", "oh"], ["y"]),
        ]
    inits = [
        ("three", np.float32(3.0)),
        ("cubic", np.float32(cubic)),
        ("scale", np.float32(math.sqrt(2 / math.pi))),
        ("one", np.float32(1.0)),
        ("half", np.float32(0.5)),
    ]
    return nodes, inits


@pytest.mark.parametrize("order", ["half_x_first", "x_first", "half_last"])
def test_gelu_new_chain_is_one_table(order):
    d = 8
    nodes, inits = _gelu_new(order)
    model = _model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), *nodes],
        [("W", RNG.normal(size=(d, d)).astype(np.float32)), *inits],
        [d],
        [d],
    )
    program = import_onnx(model, RNG.normal(size=(50, d)), name="gelu-new")
    assert _patterns(program) == ["Gelu(tanh: Pow/Mul/Add/Mul/Tanh/Add/Mul/Mul)"]
    assert program.op_counts()["table"] == 1
    assert program.metadata["onnx_fidelity"]["outputs"]["y"]["cosine_min_ppm"] >= 995_000


def test_gelu_new_chain_with_another_constant_is_refused():
    d = 8
    nodes, inits = _gelu_new("half_x_first", cubic=0.05)
    model = _model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), *nodes],
        [("W", RNG.normal(size=(d, d)).astype(np.float32)), *inits],
        [d],
        [d],
    )
    with pytest.raises(UnsupportedOnnxError) as caught:
        import_onnx(model, RNG.normal(size=(20, d)))
    ((op, _, reason),) = caught.value.problems  # the Tanh, Mul and Add convert alone; the Pow does not
    assert op == "Pow" and "tanh GELU" in reason


@pytest.mark.parametrize(("against", "folds"), [(-1, True), (1, False), (3, False)])
def test_batch_size_folds_only_when_every_batch_size_agrees(against, folds):
    """``y = x * (2 if batch == against else 1)``: with ``against=-1`` the same for every batch
    size, so it folds; with 1 or 3 it is not a constant, and the import says so."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Equal", ["b", "against"], ["e"]),
        helper.make_node("Where", ["e", "two", "one"], ["f"]),
        helper.make_node("Mul", ["x", "f"], ["y"]),
    ]
    inits = [
        *_SHAPE_INITS,
        ("against", np.array(against, np.int64)),
        ("two", np.float32(2.0)),
        ("one", np.float32(1.0)),
    ]
    model = _model(nodes, inits, [4], [4])
    if folds:
        program = import_onnx(model, RNG.normal(size=(30, 4)))
        assert program.metadata["onnx_fidelity"]["outputs"]["y"]["cosine_min_ppm"] >= 999_000
        return
    with pytest.raises(UnsupportedOnnxError) as caught:
        import_onnx(model, RNG.normal(size=(30, 4)))
    assert "Equal" in {op for op, _, _ in caught.value.problems}
