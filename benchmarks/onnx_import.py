"""Imported ONNX models vs onnxruntime on the very same ONNX file, float and QDQ int8.

    .venv/bin/python benchmarks/onnx_import.py [--quick] [--rounds N] [--block S]

Three models are made in the run the way the importer's tests make them
(``tests/quant/test_onnx_models.py`` and ``test_onnx_encoder.py``; the classes
are copied here, since a script should not import test modules): an MLP with
``BatchNorm1d`` and the residual CNN ``SmallCnn``, both trained with torch on
sklearn digits, and the small BERT-like encoder (random weights, token ids and
an attention mask in). Each is exported once by torch's TorchScript exporter
at opset 17 to one ONNX file, which every contender then runs:

* "infer": the program from `aivm_jax.quant.import_onnx` (calibrated on the
  digits training rows, the last 20% held out) through `aivm_jax.infer`, fed
  the rows as a user passes them (float pixels, quantized on the host with the
  program's input scale; int64 token ids and mask for the encoder);
* "infer int": the same call fed the program's own integer rows (int8 pixels
  quantized beforehand; int32 ids and int8 mask), which skips the host
  quantization and dtype conversion;
* "program": the compiled program alone as `infer` runs it (integer rows
  already on the device, outputs left there; ``zoo_throughput.py``'s "aivm jit");
* "ort float": onnxruntime on the ONNX file itself;
* "ort qdq": onnxruntime on the same file after ``quantize_static`` (QDQ, int8
  per-channel weights and int8 activations) calibrated on the same rows as the
  import (``_ort_qdq.qdq_session``, the zoo benchmarks' peer).

Batches 1 and 64, engines taking turns (``run_all.timed_rounds``: every round a
block of calls of each; per-round ratios, median [lowest-highest round]). Ratios
are speed ratios, AIVM infer / peer (> 1: the AIVM is faster). Fidelity, side
by side, on rows neither calibration saw (the digits test split; fresh encoder
rows): argmax agreement with the float model and cosine of the outputs with the
float model's (per row for logits, per real token for the encoder's hidden
states), for the AIVM and for QDQ, plus accuracy on the digits labels.
onnxruntime's ``MatMulInteger`` probe (``run_all.probe``) is printed at start
and end so a slow spell of this shared machine is visible.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import resource
import statistics
import sys
from functools import partial
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _ort_qdq import qdq_session  # noqa: E402
from _timing import machine_line  # noqa: E402
from run_all import fmt, probe, ratio, timed_rounds  # noqa: E402

import aivm_jax  # noqa: E402  (determinism flags before JAX starts)
from aivm_jax.models import load_digits_data  # noqa: E402
from aivm_jax.ops._vnni import kernel_status  # noqa: E402
from aivm_jax.quant import import_onnx  # noqa: E402
from aivm_jax.runtime._host import decode_scale, quantize_to_scale  # noqa: E402
from aivm_jax.runtime._infer import _compiled_for  # noqa: E402

HOLDOUT = 0.2  # import_onnx's default: the last 20% of the calibration rows are held out
VOCAB, T, D, HEADS, LAYERS = 100, 12, 32, 4, 2  # the encoder of tests/quant/test_onnx_encoder.py


# ------------------------------------------------- the models of the importer's tests


def _torch_models():
    """The importer tests' torch modules: ``(SmallCnn, Encoder)`` classes (torch imported late)."""
    import torch
    from torch import nn

    class SmallCnn(nn.Module):
        """Conv+BN+ReLU6, a depthwise-separable residual block, max and average pools, global mean."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
            self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU())
            self.pw = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
            self.pool = nn.MaxPool2d(2)
            self.avg = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.pw(self.dw(x))
            x = self.avg(self.pool(x))
            return self.head(x.mean(dim=(2, 3)))

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
        """BertModel's computation: three embeddings, post-LN layers, the extended key mask."""

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
            h = self.words(input_ids) + self.positions(self.position_ids[:, :t])
            h = self.ln(h + self.types(self.token_type_ids[:, :t]))
            extended = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
            for layer in self.layers:
                h = layer(h, extended)
            return h

    return SmallCnn, Encoder


def _train(model, x, y, epochs):
    """Full-batch Adam as the tests train; BatchNorm statistics recomputed exactly for eval mode."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None
        model(xt)
    return model.eval()


def _export(model, example: dict[str, np.ndarray], output: str) -> bytes:
    """``model`` as ONNX bytes (TorchScript exporter, opset 17), every input's and the output's axis 0
    variable (the encoder's sequence axis too)."""
    import torch

    axes = {
        name: {0: "batch", **({1: "seq"} if a.ndim == 2 and a.dtype.kind == "i" else {})}
        for name, a in example.items()
    }
    axes[output] = {0: "batch", **({1: "seq"} if output == "hidden" else {})}
    buffer = io.BytesIO()
    torch.onnx.export(
        model, tuple(torch.tensor(a) for a in example.values()), buffer, dynamo=False, opset_version=17,
        input_names=list(example), output_names=[output], dynamic_axes=axes,
    )  # fmt: skip
    return buffer.getvalue()


def _encoder_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids and attention masks of ``n`` rows of 3-12 real tokens, right-padded (as the tests)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, T + 1, n)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(1, VOCAB, (n, T)), 0)
    return {"input_ids": ids, "attention_mask": mask}


class Case:
    """One model: its ONNX bytes, calibration and held-out rows, and how to cut a batch."""

    def __init__(self, name, onnx_bytes, calibration, heldout, labels, output, batch_rows, dims=None):
        self.name, self.onnx, self.output = name, onnx_bytes, output
        self.calibration, self.heldout, self.labels = calibration, heldout, labels
        self.batch_rows, self.dims = batch_rows, dims


def make_cases() -> list[Case]:
    """Train and export the three models (the tests' epochs: 40 for the MLP, 80 for the CNN)."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    small_cnn, encoder = _torch_models()
    data = load_digits_data()
    x, y = (data.x_train / 16.0).astype(np.float32), data.y_train
    x_test = (data.x_test / 16.0).astype(np.float32)
    torch.manual_seed(0)  # the initial weights (the tests' fixtures leave them to the session's seed)
    mlp = _train(
        nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)),
        x,
        y,
        40,
    )
    torch.manual_seed(0)
    cnn = _train(small_cnn(), x.reshape(-1, 1, 8, 8), y, 80)
    enc = encoder().eval()
    cnn_x, cnn_test = x.reshape(-1, 1, 8, 8), x_test.reshape(-1, 1, 8, 8)
    enc_calibration = _encoder_rows(80, 1)

    def digits_rows(rows):
        return lambda batch: {"x": np.resize(rows, (batch, *rows.shape[1:]))}

    return [
        Case("mlp+bn1d", _export(mlp, {"x": x[:2]}, "logits"), {"x": x}, {"x": x_test}, data.y_test, "logits",
             digits_rows(x_test)),
        Case("small-cnn", _export(cnn, {"x": cnn_x[:2]}, "logits"), {"x": cnn_x}, {"x": cnn_test}, data.y_test,
             "logits", digits_rows(cnn_test)),
        Case("encoder", _export(enc, _encoder_rows(2, 0), "hidden"), enc_calibration, _encoder_rows(256, 2), None,
             "hidden", lambda batch: _encoder_rows(batch, 3), dims={"seq": T}),
    ]  # fmt: skip


# ------------------------------------------------------------------- contenders


def _ort_float(onnx_bytes: bytes):
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # not the unused-initializer notes of every session
    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def _ort_qdq(case: Case, calibration_rows: int):
    """QDQ int8 of the same file, calibrated on the import's calibration rows in chunks of 64."""
    feeds = [{k: v[i : i + 64] for k, v in case.calibration.items()} for i in range(0, calibration_rows, 64)]
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice on pre-processing, per model
    return qdq_session(lambda path: path.write_bytes(case.onnx), feeds)


def _program_feeds(program, rows: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The program's own int rows, in input order: float inputs quantized with the stored scale."""
    scales = program.metadata["scales"]
    return [
        quantize_to_scale(rows[spec.name], scales[spec.name])
        if spec.name in scales
        else rows[spec.name].astype(spec.dtype)
        for spec in program.inputs
    ]


def _real_outputs(program, rows: dict[str, np.ndarray]) -> np.ndarray:
    """The program's first output as real numbers (output scale applied), via `aivm_jax.infer`."""
    spec = program.outputs[0]
    user = rows[program.inputs[0].name] if len(program.inputs) == 1 else rows
    ints = aivm_jax.infer(program, user).named_outputs[spec.name]
    return ints.astype(np.float64) * decode_scale(program.metadata["scales"][spec.name])


def _cosines(got: np.ndarray, want: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    got, want = got.astype(np.float64), want.astype(np.float64)
    cos = (got * want).sum(-1) / np.maximum(
        np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1), 1e-30
    )
    return cos[keep] if keep is not None else cos


def fidelity(case: Case, program, float_session, qdq) -> dict[str, str]:
    """Side by side, on held-out rows: AIVM vs float and QDQ vs float (cosine; argmax; accuracy)."""
    want = float_session.run(None, case.heldout)[0]
    engines = {"aivm": _real_outputs(program, case.heldout)}
    if qdq is not None:
        engines["qdq"] = qdq.run(None, case.heldout)[0]
    keep = case.heldout["attention_mask"] == 1 if "attention_mask" in case.heldout else None
    row = {}
    for name, got in engines.items():
        cos = _cosines(got, want, keep)
        cell = f"cos {cos.mean():.5f} min {cos.min():.4f}"
        if case.labels is not None:
            agree = (got.argmax(-1) == want.argmax(-1)).mean()
            cell += f", argmax {agree:6.1%}, acc {(got.argmax(-1) == case.labels).mean():6.1%}"
        row[name] = cell
    if case.labels is not None:
        row["float"] = f"acc {(want.argmax(-1) == case.labels).mean():6.1%}"
    return row


def bench(cases: list[Case], rounds: int, block: float, batches=(1, 64)) -> None:
    header = (
        f"{'model':10s} {'batch':>5s} {'infer/s':>9s} {'infer int/s':>11s} {'program/s':>10s} {'ort f32/s':>10s} "
        f"{'ort qdq/s':>10s} "
        f"{'infer vs ort qdq':>22s} {'infer vs ort f32':>22s} {'program vs ort qdq':>22s}"
    )
    fidelity_rows = []
    case_labels = {case.name: case.labels is not None for case in cases}
    print(header)
    print("-" * len(header))
    for case in cases:
        program = import_onnx(case.onnx, case.calibration, dims=case.dims, name=case.name, holdout=HOLDOUT)
        rows = next(iter(case.calibration.values())).shape[0]
        float_session, qdq = _ort_float(case.onnx), _ort_qdq(case, rows - int(rows * HOLDOUT))
        fidelity_rows.append(
            (case.name, program.metadata["onnx_fidelity"], fidelity(case, program, float_session, qdq))
        )
        entry = _compiled_for(program)
        for batch in batches:
            user = case.batch_rows(batch)
            user_arg = user["x"] if len(program.inputs) == 1 else user
            ints = _program_feeds(program, user)
            int_arg = dict(zip((spec.name for spec in program.inputs), ints)) if len(ints) > 1 else ints[0]
            want = aivm_jax.infer(program, int_arg, mode="reference")
            got = aivm_jax.infer(program, user_arg)
            assert got.output_hash == want.output_hash, (
                f"{case.name}: infer on user rows differs from the reference"
            )
            on_device = {spec.name: jax.device_put(a) for spec, a in zip(program.inputs, ints)}
            out = np.asarray(entry.run_local(on_device)[0])
            assert np.array_equal(out, got.outputs), f"{case.name}: the program alone differs from infer"
            calls = {
                "infer": partial(aivm_jax.infer, program, user_arg),
                "program": partial(entry.run_local, on_device),
                "infer int": partial(aivm_jax.infer, program, int_arg),
                "float": partial(float_session.run, None, user),
            }
            if qdq is not None:
                calls["qdq"] = partial(qdq.run, None, user)
            t = timed_rounds(calls, rounds, block)
            per_s = {name: batch / statistics.median(v) for name, v in t.items()}
            q = (
                (fmt(ratio(t["qdq"], t["infer"])), fmt(ratio(t["qdq"], t["program"])))
                if qdq
                else ("n/a", "n/a")
            )
            print(
                f"{case.name:10s} {batch:5d} {per_s['infer']:9,.0f} {per_s['infer int']:11,.0f} {per_s['program']:10,.0f} "
                f"{per_s['float']:10,.0f} {per_s.get('qdq', float('nan')):10,.0f} {q[0]:>22s} "
                f"{fmt(ratio(t['float'], t['infer'])):>22s} {q[1]:>22s}",
                flush=True,
            )
    print("\nfidelity on held-out rows, each engine vs onnxruntime float on the same file")
    for name, report, row in fidelity_rows:
        print(f"{name:10s} aivm: {row['aivm']}")
        print(f"{'':10s} qdq:  {row.get('qdq', 'n/a')}")
        if "float" in row:
            print(f"{'':10s} float: {row['float']}")
        out = next(iter(report["outputs"].values()))
        print(
            f"{'':10s} (the importer's own report on its {report['examples']} held-out calibration rows: "
            f"cosine mean {out['cosine_mean_ppm'] / 1e6:.5f}"
            + (f", argmax {report['argmax_agreement']}/{report['examples']})" if case_labels[name] else ")")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer and shorter rounds, a smaller probe (a few minutes)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per figure (default 7, quick 3)")
    parser.add_argument(
        "--block", type=float, default=None, help="seconds per block (default 0.1, quick 0.05)"
    )
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    block = args.block or (0.05 if args.quick else 0.1)
    try:
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        parser.error("the models and peers need torch and onnxruntime: pip install -e '.[bench]'")
    size = 512 if args.quick else 1024
    print(machine_line())
    print(
        f"engine: {kernel_status()}; rounds {rounds}, blocks of {block} s; ratios: median [lowest-highest round]"
    )
    print(f"probe at start: onnxruntime MatMulInteger {size}^3 {probe(size, rounds):.1f} GOP/s")
    cases = make_cases()
    print("\nrows per second; ratios are speed ratios, AIVM / onnxruntime (> 1: the AIVM is faster)")
    bench(cases, rounds, block)
    print(f"\nprobe at end: onnxruntime MatMulInteger {size}^3 {probe(size, rounds):.1f} GOP/s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
