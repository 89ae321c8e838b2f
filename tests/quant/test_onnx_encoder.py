"""A small BERT-like encoder exported by PyTorch (TorchScript, opsets 13 and 17) through the importer.

``transformers`` is not a dependency here, so the encoder is written out the way
``BertModel`` computes it: word + position + token-type embeddings, post-LN
layers of multi-head attention with transformers' extended attention mask
``(1 - m) * finfo.min`` built from ``attention_mask`` at run time, and an Erf
GELU feed-forward. At opset 13 the exporter writes LayerNorm and GELU as chains.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from torch import nn  # noqa: E402

import aivm_jax  # noqa: E402
from aivm_jax.quant import import_onnx  # noqa: E402

VOCAB, T, D, HEADS, LAYERS = 100, 12, 32, 4, 2
COSINE_MEAN_BAR, COSINE_MIN_BAR = 999_000, 995_000
"""Per-row cosine (ppm) of the program's last hidden state with onnxruntime's, on held-out rows."""


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(D, eps=1e-12), nn.LayerNorm(D, eps=1e-12)
        self.up, self.down, self.act = nn.Linear(D, 4 * D), nn.Linear(4 * D, D), nn.GELU()

    def forward(self, h, extended):
        b, t, _ = h.shape

        def heads(z):
            return z.view(b, t, HEADS, D // HEADS).transpose(1, 2)

        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(D // HEADS) + extended
        context = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, t, D)
        h = self.ln1(h + self.o(context))
        return self.ln2(h + self.down(self.act(self.up(h))))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.words, self.positions, self.types = (
            nn.Embedding(VOCAB, D),
            nn.Embedding(T, D),
            nn.Embedding(2, D),
        )
        self.ln = nn.LayerNorm(D, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.register_buffer("position_ids", torch.arange(T)[None])
        self.register_buffer("token_type_ids", torch.zeros(1, T, dtype=torch.long))

    def forward(self, input_ids, attention_mask):
        t = input_ids.shape[1]
        h = (
            self.words(input_ids)
            + self.positions(self.position_ids[:, :t])
            + self.types(self.token_type_ids[:, :t])
        )
        h = self.ln(h)
        extended = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        for layer in self.layers:
            h = layer(h, extended)
        return h


def _rows(n, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, T + 1, n)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(1, VOCAB, (n, T)), 0)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(1)
    return Encoder().eval()


def _export(model, opset):
    rows = _rows(2, 0)
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.tensor(rows["input_ids"]), torch.tensor(rows["attention_mask"])),
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=["input_ids", "attention_mask"],
        output_names=["hidden"],
        dynamic_axes={n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "hidden")},
    )
    return buffer.getvalue()


@pytest.fixture(scope="module", params=[13, 17])
def exported(request, encoder):
    return _export(encoder, request.param)


@pytest.fixture(scope="module")
def program(exported):
    return import_onnx(exported, _rows(80, 1), dims={"seq": T}, name="bert-like")


def test_encoder_imports_within_the_bar(program, encoder):
    report = program.metadata["onnx_fidelity"]
    out = report["outputs"]["hidden"]
    assert report["held_out"] and report["examples"] == 16
    assert out["cosine_mean_ppm"] >= COSINE_MEAN_BAR and out["cosine_min_ppm"] >= COSINE_MIN_BAR, out
    patterns = [p["pattern"] for p in program.metadata["source"]["patterns"]]
    assert patterns.count("MaskedSoftmax(Add+Softmax, key mask from attention_mask)") == LAYERS
    assert patterns.count("Gelu(Div/Erf/Add/Mul/Mul)") == LAYERS
    assert sum(p.startswith("KeyMask(") for p in patterns) == 1
    ops = program.op_counts()
    assert ops["layer_norm"] == 2 * LAYERS + 1 and ops["softmax"] == LAYERS
    # word and position tables: the position rows are gathered at iota(input_ids), as MiniLM's
    assert ops["batch_matmul"] == 2 * LAYERS and ops["gather"] == 2 and ops["iota"] == 1
    assert [(s.name, s.dtype, s.bounds, s.dims()) for s in program.inputs] == [
        ("input_ids", "int32", (0, VOCAB - 1), [f"<={T}"]),
        ("attention_mask", "int8", (0, 1), [f"<={T}"]),
    ]
    assert [s.dims() for s in program.outputs] == [[f"<={T}", str(D)]]
    assert program.metadata["source"]["dims"] == {"seq": {"size": T, "dynamic": True}}
    # the program against PyTorch itself, on rows it has not seen, at the real tokens
    rows = _rows(24, 2)
    with torch.no_grad():
        want = encoder(*(torch.tensor(rows[k]) for k in ("input_ids", "attention_mask"))).numpy()
    result = aivm_jax.infer(program, rows)
    scale = program.metadata["scales"]["hidden"]
    got = result.outputs.astype(np.float64) * scale["mantissa"] * 2.0 ** scale["exponent"]
    keep = rows["attention_mask"] == 1
    cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cosine[keep].mean() >= 0.999 and cosine[keep].min() >= 0.99


def test_encoder_runs_at_shorter_lengths(program, exported):
    """The sequence axis is dynamic: at length L the program follows the float model run at L, and
    a row that fits in L gives, at its real tokens, exactly the bits it gives padded to T."""
    import onnx

    from aivm_jax.quant.onnx._fidelity import run_float

    rows = _rows(24, 2)
    full = aivm_jax.infer(program, rows).outputs
    scale = program.metadata["scales"]["hidden"]
    opset = program.metadata["source"]["opset"]
    for length in (7, 3) if opset == 17 else (5,):  # not lengths the importer converted at (T, T - 1)
        short = {k: v[:, :length] for k, v in rows.items()}
        result = aivm_jax.infer(program, short)
        assert result.outputs.shape == (24, length, D)
        want = next(iter(run_float(onnx.load_from_string(exported), short)[0].values()))
        got = result.outputs.astype(np.float64) * scale["mantissa"] * 2.0 ** scale["exponent"]
        keep = short["attention_mask"] == 1
        cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
        assert cosine[keep].mean() * 1e6 >= COSINE_MEAN_BAR and cosine[keep].min() * 1e6 >= COSINE_MIN_BAR
        fits = rows["attention_mask"][:, length:].sum(axis=1) == 0  # padding masked where the model masks
        assert fits.sum() >= 2
        kept = keep & fits[:, None]
        np.testing.assert_array_equal(result.outputs[kept], full[:, :length][kept])
    with pytest.raises(aivm_jax.AivmError, match="<=12"):
        aivm_jax.infer(program, {k: np.concatenate([v, v[:, :1]], axis=1) for k, v in rows.items()})


@pytest.mark.slow
def test_encoder_is_deterministic_and_masks_padding(program):
    if program.metadata["source"]["opset"] == 13:
        pytest.skip("the opset-13 program has the opset-17 program's ops; one battery keeps this file fast")
    rows = _rows(12, 3)
    modes = {m: aivm_jax.infer(program, rows, mode=m) for m in ("jit", "eager", "reference")}
    np.testing.assert_array_equal(modes["jit"].outputs, modes["reference"].outputs)
    np.testing.assert_array_equal(modes["eager"].outputs, modes["reference"].outputs)
    full = modes["jit"].row_hashes
    for size in (1, 5):
        for start in range(0, 12 - size, 5):
            part = {k: v[start : start + size] for k, v in rows.items()}
            assert aivm_jax.infer(program, part).row_hashes == full[start : start + size]
    # what stands at padded positions changes nothing at the real tokens
    noisy = {k: v.copy() for k, v in rows.items()}
    noisy["input_ids"] = np.where(rows["attention_mask"] == 1, rows["input_ids"], 7)
    out = aivm_jax.infer(program, noisy).outputs
    keep = rows["attention_mask"] == 1
    np.testing.assert_array_equal(out[keep], modes["jit"].outputs[keep])
