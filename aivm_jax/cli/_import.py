"""`aivm import`: an ONNX model plus calibration data, or a Hugging Face folder, in; a `.aivm` program out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["import_command"]


def _dim(ctx, param, values: tuple[str, ...]) -> dict[str, int]:
    dims = {}
    for value in values:
        name, sep, size = value.partition("=")
        if not sep or not name or not size.isdigit() or int(size) < 1:
            raise click.BadParameter(f"expected NAME=N with N >= 1, got {value!r}")
        dims[name] = int(size)
    return dims


@click.command("import")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--calibration",
    default=None,
    type=click.Path(path_type=Path),
    help="ONNX: float rows of real input data, .npy (one input) or .npz (one array per input name); "
    "the last 20% are held out for the fidelity report. Folder (optional): a .txt file of "
    "sentences, one per line (default: built-in English sentences).",
)
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the .aivm."
)
@click.option(
    "--dim",
    "dims",
    multiple=True,
    callback=_dim,
    help="Bind a symbolic dim other than the batch axis, e.g. --dim seq=128; repeatable.",
)
@click.option(
    "--name", default=None, help="The program's name (default: the model file's stem or folder's name)."
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def import_command(
    model: Path, calibration: Path | None, output: Path, dims: dict[str, int], name: str | None, as_json: bool
) -> None:
    """Import an ONNX model (opsets 13-20) as an int8 program, calibrated on real data,
    or a Hugging Face folder (BERT-family encoders)."""
    import aivm_jax
    from aivm_jax.quant import import_onnx

    if model.is_dir():
        _import_folder(model, calibration, output, dims, name, as_json)
        return
    if calibration is None:
        raise click.UsageError("Missing option '--calibration' (an ONNX model needs calibration data).")
    program = import_onnx(model, calibration, dims=dims, name=name)
    model_id = aivm_jax.save(program, output)
    fidelity = program.metadata["onnx_fidelity"]
    data = {
        "model_id": model_id,
        "output": str(output),
        "ops": program.op_counts(),
        "params": program.param_count(),
        "scales": program.metadata["scales"],
        "fidelity": fidelity,
        "inputs": {s.name: s.dims() for s in program.inputs},
        "dims": program.metadata["source"].get("dims", {}),
    }
    lines = [f"wrote {output}", f"model id   {model_id}"]
    lines.append(f"inputs     {', '.join(f'{s.name} {s.describe()}' for s in program.inputs)}")
    lines.extend(_dim_lines(data["dims"]))
    lines.append(f"ops        {', '.join(f'{k} x{v}' for k, v in data['ops'].items())}")
    lines.extend(_fidelity_lines(fidelity))
    click.echo(json.dumps(data, indent=2) if as_json else "\n".join(lines))


def _dim_lines(dims: dict) -> list[str]:
    """One line per ``--dim``: a dynamic axis, or a static one and why."""
    return [
        f"dim        {name}: dynamic, any length up to {d['size']}"
        if d["dynamic"]
        else f"dim        {name}: axis {name} stays static at {d['size']}: {d['static_because']}"
        for name, d in dims.items()
    ]


def _fidelity_lines(fidelity: dict) -> list[str]:
    """One line per output of an importer's fidelity report."""
    lines = []
    n = fidelity["examples"]
    where = "held-out" if fidelity["held_out"] else "calibration"
    for name, out in fidelity["outputs"].items():
        agreement = (
            f"argmax agreement {100 * out['argmax_agreement'] / out['argmax_positions']:.2f}%, "
            if "argmax_agreement" in out
            else ""
        )
        lines.append(
            f"fidelity   {name} vs {fidelity['reference']} on {n} {where} rows: {agreement}"
            f"cosine mean {out['cosine_mean_ppm'] / 1e6:.4f} (min {out['cosine_min_ppm'] / 1e6:.4f}), "
            f"max error {out['max_abs_error_e6'] / 1e6:.4g}"
        )
    return lines


def _import_folder(
    folder: Path,
    calibration: Path | None,
    output: Path,
    dims: dict[str, int],
    name: str | None,
    as_json: bool,
) -> None:
    """The folder form: `aivm_jax.quant.hf.import_folder`, whatever the model type."""
    import aivm_jax
    from aivm_jax.quant.hf import HfImportError, import_folder

    if dims:
        raise HfImportError(
            "--dim applies to ONNX models only; a Hugging Face folder's config sets its sizes"
        )
    options = {} if calibration is None else {"calibration_texts": _read_texts(calibration)}
    program = import_folder(folder, name=name, **options)
    model_id = aivm_jax.save(program, output)
    meta = program.metadata
    fidelity = next((meta[k] for k in _FOLDER_FIDELITY if k in meta), None)
    data = {
        "model_id": model_id,
        "output": str(output),
        "kind": meta.get("kind"),
        "ops": program.op_counts(),
        "params": program.param_count(),
        "fidelity": fidelity,
    }
    lines = [f"wrote {output}", f"model id   {model_id}"]
    lines.append(f"ops        {', '.join(f'{k} x{v}' for k, v in data['ops'].items())}")
    lines.append(f"params     {data['params']}")
    lines.extend(folder_fidelity_lines(meta))
    click.echo(json.dumps(data, indent=2) if as_json else "\n".join(lines))


def folder_fidelity_lines(meta: dict[str, Any]) -> list[str]:
    """The folder importers' fidelity reports as `aivm import` and `aivm info` print them."""
    lines = []
    if "embedding_fidelity" in meta:
        f = meta["embedding_fidelity"]
        lines.append(
            f"fidelity   cosine to the float model on {f['dataset']}: mean "
            f"{f['mean_cosine_ppm'] / 1e6:.4f}, min {f['min_cosine_ppm'] / 1e6:.4f}"
        )
    if "lm_fidelity" in meta:
        f = meta["lm_fidelity"]
        lines.append(
            f"fidelity   held-out next-token agreement {f['agreement_ppm'] / 1e4:.2f}%, "
            f"perplexity integer/float {f['perplexity_ratio_ppm'] / 1e6:.4f}"
        )
    return lines


_FOLDER_FIDELITY = ("embedding_fidelity", "lm_fidelity")
"""Metadata keys of the folder importers' fidelity reports (one per program kind)."""


def _read_texts(path: Path) -> list[str]:
    """Calibration sentences for a folder import: a UTF-8 text file, one per line, blank lines skipped."""
    from aivm_jax.quant.hf import HfImportError

    if path.suffix != ".txt":
        raise HfImportError(
            f"{path}: calibration for a Hugging Face folder is a .txt file, one sentence per line"
        )
    try:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise HfImportError(f"cannot read calibration sentences from {path}: {error}") from None
    texts = [t for t in texts if t]
    if not texts:
        raise HfImportError(f"{path} holds no sentences; give one sentence per line")
    return texts
