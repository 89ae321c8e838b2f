"""`aivm trace`: the dispute trace of one request input (`aivm_jax.disputes.trace`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["trace_command"]


@click.command("trace")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--input", "input_path", required=True, type=click.Path(path_type=Path), help="X.npy, X.json or X.npz."
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def trace_command(file: Path, input_path: Path, as_json: bool) -> None:
    """Commit to every step's output of a request: trace root, step roots, model commitment."""
    import aivm_jax
    from aivm_jax.disputes import model_commitment, trace
    from aivm_jax.runtime import read_input_file, read_named_inputs

    program = aivm_jax.load(file)
    read = read_named_inputs if input_path.suffix == ".npz" else read_input_file
    result = trace(program, read(input_path))
    commitment = model_commitment(program)
    data = {
        "model_id": result.model_id,
        "model_commitment": commitment.hex,
        "output_hash": result.output_hash,
        "trace_root": result.hex,
        "steps": result.steps,
        "step_names": list(result.step_names),
        "rows": [
            {"trace_root": "0x" + row.root.hex(), "step_roots": ["0x" + r.hex() for r in row.step_roots]}
            for row in result.rows
        ],
    }
    lines = [
        f"model id          {data['model_id']}",
        f"model commitment  {data['model_commitment']}",
        f"output hash       {data['output_hash']}",
        f"trace root        {data['trace_root']}",
        f"steps             {data['steps']} ({len(program.inputs)} inputs, {len(program.nodes)} ops)",
    ]
    for r, row in enumerate(data["rows"]):
        lines.append(f"row {r}             {row['trace_root']}")
        for s, (name, root) in enumerate(zip(result.step_names, row["step_roots"])):
            lines.append(f"  step {s:>3} {name:<24} {root}")
    click.echo(json.dumps(data, indent=2) if as_json else "\n".join(lines))
