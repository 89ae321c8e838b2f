"""The `aivm` command: each command parses its options and makes one library call.

Errors the library raises on purpose (`AivmError`) become one line on stderr
and exit status 1, in `_AivmGroup.invoke`; anything else is a bug.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

import aivm_jax
from aivm_jax import AivmError
from aivm_jax.cli._import import import_command
from aivm_jax.cli._trace import trace_command

__all__ = ["main"]


class _AivmGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AivmError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)


def _emit(data: dict[str, Any], as_json: bool, human: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else human)


def _progress(message: str) -> None:
    click.echo(message, err=True)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")

devices_option = click.option(
    "--devices",
    type=click.Choice(["default", "all"]),
    default="default",
    show_default=True,
    help="Run on JAX's default device, or shard the batch over all local devices.",
)


def input_option(help_text: str):
    """``--input X.npy|X.json``, read by `aivm_jax.runtime.read_input_file`."""
    return click.option(
        "--input", "input_path", required=True, type=click.Path(path_type=Path), help=help_text
    )


program_argument = click.argument("file", type=click.Path(path_type=Path))


@click.group(cls=_AivmGroup)
@click.version_option(aivm_jax.__version__, prog_name="aivm")
def main() -> None:
    """AIVM: bit-identical integer inference of AI models."""


def _spec_json(spec, scales: dict[str, Any] | None = None) -> dict[str, Any]:
    """A value spec as JSON; with its real scale when the program stores one (imported programs)."""
    from aivm_jax.runtime._host import decode_scale

    out = spec.to_json()
    if scales and spec.name in scales:
        out["scale"] = decode_scale(scales[spec.name])
        out["scale_exact"] = dict(scales[spec.name])
    return out


@main.command()
@program_argument
@json_option
def info(file: Path, as_json: bool) -> None:
    """Show a program's model id, I/O specs, ops, parameters and fidelity."""
    from aivm_jax.quant import describe_fidelity
    from aivm_jax.runtime._host import program_scales

    program = aivm_jax.load(file)
    scales = program_scales(program)
    data = {
        "model_id": program.model_id,
        "name": program.name,
        "opset": program.opset,
        "inputs": [_spec_json(s, scales) for s in program.inputs],
        "outputs": [_spec_json(s, scales) for s in program.outputs],
        "ops": program.op_counts(),
        "params": program.param_count(),
        "fidelity": describe_fidelity(dict(program.metadata.get("fidelity", {}))),
        "metadata": {k: v for k, v in program.metadata.items() if k != "fidelity"},
    }
    fid = data["fidelity"]
    lines = [
        f"model id   {data['model_id']}",
        f"name       {program.name} (opset {program.opset})",
        *[f"input      {s['name']}: {_describe(s)}" for s in data["inputs"]],
        *[f"output     {s['name']}: {_describe(s)}" for s in data["outputs"]],
        f"ops        {', '.join(f'{k} x{v}' for k, v in data['ops'].items())}",
        f"params     {data['params']}",
    ]
    if fid:
        lines.append(
            f"fidelity   {fid['metric']} on {fid['dataset']}: float {fid['float_accuracy_pct']}%, "
            f"integer {fid['integer_accuracy_pct']}%, agreement {fid['agreement_pct']}%"
        )
    meta = program.metadata
    if "onnx_fidelity" in meta:
        from aivm_jax.cli._import import _fidelity_lines

        lines.extend(_fidelity_lines(meta["onnx_fidelity"]))
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
    _emit(data, as_json, "\n".join(lines))


def _describe(spec_json: dict[str, Any]) -> str:
    spec = aivm_jax.ValueSpec(**{k: v for k, v in spec_json.items() if k not in ("scale", "scale_exact")})
    scale = f", scale {spec_json['scale']:.6g}" if "scale" in spec_json else ""
    return spec.describe() + scale


@main.command()
@program_argument
@input_option(
    "Inputs with a leading batch axis: .npy or .json; .npz by input name. Integers, or floats "
    "for a program that stores its input scales (imported programs): quantized on the host."
)
@devices_option
@json_option
def infer(file: Path, input_path: Path, devices: str, as_json: bool) -> None:
    """Run a program on integer inputs; print outputs and their hashes."""
    from aivm_jax.runtime import read_input_file, read_named_inputs

    read = read_named_inputs if input_path.suffix == ".npz" else read_input_file
    result = aivm_jax.infer(file, read(input_path), devices=None if devices == "default" else "all")
    data = {
        "model_id": result.model_id,
        "output_hash": result.output_hash,
        "row_hashes": list(result.row_hashes),
        "outputs": result.outputs.tolist(),
    }
    if result.input_quantized:
        data["input_quantized"] = True
    lines = [f"model id     {result.model_id}", f"output hash  {result.output_hash}"]
    if result.input_quantized:
        lines.append("input        float, quantized on the host with the program's input scale")
    for i, (row, digest) in enumerate(zip(result.outputs, result.row_hashes)):
        summary = f" argmax {int(np.argmax(row))}" if row.ndim == 1 else ""
        lines.append(f"row {i}: {row.tolist()}{summary}  {digest}")
    _emit(data, as_json, "\n".join(lines))


@main.command()
@program_argument
@click.argument("texts", nargs=-1)
@click.option(
    "--text-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read more sentences from this file, one per line (blank lines skipped).",
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@devices_option
@json_option
def embed(
    file: Path, texts: tuple[str, ...], text_file: Path | None, batch_size: int, devices: str, as_json: bool
) -> None:
    """Embed sentences with a sentence-encoder program (e.g. minilm-l6): one vector per sentence.

    The vectors are the program's integer mean-pooled output divided by its
    norm on the host. Row hashes cover the integer output.
    """
    sentences = list(texts)
    if text_file is not None:
        sentences += [line.strip() for line in text_file.read_text().splitlines() if line.strip()]
    if not sentences:
        raise click.UsageError("give sentences as arguments or with --text-file")

    def progress(done: int, total: int) -> None:
        if total > batch_size:
            _progress(f"embedded {done}/{total}")

    result = aivm_jax.embed(
        file,
        sentences,
        batch_size=batch_size,
        devices=None if devices == "default" else "all",
        progress=progress,
    )
    data = {
        "model_id": result.model_id,
        "output_hash": result.output_hash,
        "row_hashes": list(result.row_hashes),
        "embeddings": [[float(v) for v in row] for row in result.embeddings],
    }
    lines = [f"model id     {result.model_id}", f"output hash  {result.output_hash}"]
    for sentence, row, digest in zip(sentences, result.embeddings, result.row_hashes):
        head = " ".join(f"{v:+.4f}" for v in row[:4])
        lines.append(f"{digest[:18]}  [{head} ...] ({row.size}-d)  {sentence[:60]}")
    _emit(data, as_json, "\n".join(lines))


@main.command()
@program_argument
@click.option("--prompt", "prompts", multiple=True, required=True, help="A prompt; repeat for a batch.")
@click.option("--max-new-tokens", required=True, type=click.IntRange(min=1), help="Characters to generate.")
@click.option("--no-cache", is_flag=True, help="Recompute the whole prefix each step (same tokens, slower).")
@devices_option
@json_option
def generate(
    file: Path, prompts: tuple[str, ...], max_new_tokens: int, no_cache: bool, devices: str, as_json: bool
) -> None:
    """Greedy generation with a character LM program (e.g. char-gpt)."""

    def progress(step: int, total: int) -> None:
        if step == total or step % 16 == 0:
            _progress(f"token {step}/{total}")

    result = aivm_jax.generate(
        file,
        prompts,
        max_new_tokens,
        cache=not no_cache,
        devices=None if devices == "default" else "all",
        progress=progress,
    )
    lines = [f"model id  {result.model_id}"]
    for prompt, text, digest in zip(result.prompts, result.texts, result.token_hashes):
        lines += [f"--- {digest}", f"{prompt}{text}"]
    _emit(result.to_json(), as_json, "\n".join(lines))


@main.command()
@program_argument
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Rows on the first axis: .npy for a one-input program, .npz by input name.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Job directory (rerun to resume).",
)
@click.option(
    "--chunk-rows", default=4096, show_default=True, type=click.IntRange(min=1), help="Rows per chunk."
)
@click.option("--coordinator", help="HOST:PORT of process 0, for a multi-host job (jax.distributed).")
@click.option("--num-processes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--process-id", type=click.IntRange(min=0), default=0, show_default=True)
@json_option
def batch(
    file: Path,
    input_path: Path,
    out_dir: Path,
    chunk_rows: int,
    coordinator: str | None,
    num_processes: int,
    process_id: int,
    as_json: bool,
) -> None:
    """Run a data set through a program on all local devices; print the Merkle root of its row hashes.

    Kill it at any point and rerun the same command: finished chunks are
    kept (after re-checking their hashes), nothing is lost or duplicated.
    """
    from aivm_jax.batch import init_distributed, read_batch_inputs, run_batch

    if num_processes > 1:
        if coordinator is None:
            raise click.UsageError("--num-processes > 1 needs --coordinator HOST:PORT")
        init_distributed(coordinator, num_processes, process_id)
    program = aivm_jax.load(file)
    inputs = read_batch_inputs(program, input_path)
    with click.progressbar(length=1, label="chunks", file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.length = total
            bar.update(1)

        result = run_batch(program, inputs, out_dir, chunk_rows=chunk_rows, progress=progress)
    human = (
        f"model id     {result.model_id}\nrows         {result.rows}\n"
        f"merkle root  {result.merkle_root}\noutputs      {out_dir / 'outputs.npz'}\n"
        f"chunks       {result.chunks_computed} computed, {result.chunks_reused} reused"
    )
    _emit(result.to_json(), as_json, human)


main.add_command(import_command)
main.add_command(trace_command)


@main.group(cls=_AivmGroup)
def zoo() -> None:
    """Reference models that build reproducibly from data that ships offline."""


@zoo.command("list")
@json_option
def zoo_list(as_json: bool) -> None:
    """List the zoo's models."""
    from aivm_jax.models import zoo_models

    models = zoo_models()
    _emit({"models": models}, as_json, "\n".join(f"{k:12s} {v}" for k, v in models.items()))


@zoo.command("build")
@click.argument("name")
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the .aivm file."
)
@json_option
def zoo_build(name: str, output: Path, as_json: bool) -> None:
    """Train, quantize and save zoo model NAME (seeded: same command, same model id)."""
    from aivm_jax.models import build

    program = build(name, _progress)
    model_id = aivm_jax.save(program, output)
    _emit({"model_id": model_id, "path": str(output)}, as_json, f"wrote {output}\nmodel id {model_id}")


@main.command()
@json_option
def conformance(as_json: bool) -> None:
    """Check that this machine computes the AIVM exactly (golden vectors, every backend)."""
    from aivm_jax.conformance import run_conformance

    report = run_conformance(_progress)
    lines = [
        f"{name:16s} {b['passed']}/{b['checks']} match"
        + (f"  FAILED: {', '.join(b['failures'])}" if b["failures"] else "")
        for name, b in report["backends"].items()
    ]
    verdict = f"CONFORMANT: this machine computes AIVM opset {report['opset']} exactly"
    if not report["conformant"]:
        verdict = "NOT CONFORMANT: do not join the network with this machine"
    _emit(report, as_json, "\n".join([*lines, verdict]))
    if not report["conformant"]:
        sys.exit(2)


# --------------------------------------------------------------------------- proofs

cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    envvar="AIVM_CACHE_DIR",
    default=None,
    help="Where proving keys are cached (default: $AIVM_CACHE_DIR or ~/.cache/aivm).",
)


class _ProveGroup(_AivmGroup):
    """`aivm prove FILE ...` runs the proof itself; `setup` and `verifier` are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_ProveGroup)
def prove() -> None:
    """Zero-knowledge proofs of the exact output (EZKL).

    \b
      aivm prove setup FILE (--srs PATH | --dev-srs)
      aivm prove FILE --input X.npy -o PROOF
      aivm prove verifier FILE -o DIR
    """


@prove.command("setup")
@program_argument
@click.option("--srs", type=click.Path(path_type=Path), help="Structured reference string from a ceremony.")
@click.option("--dev-srs", is_flag=True, help="Generate a local SRS: for development only, NOT secure.")
@cache_dir_option
@json_option
def prove_setup(file: Path, srs: Path | None, dev_srs: bool, cache_dir: Path | None, as_json: bool) -> None:
    """Build FILE's circuit and keys once (cached per model id)."""
    from aivm_jax import proofs

    keys = proofs.setup(
        aivm_jax.load(file), srs=srs, dev_srs=dev_srs, cache_dir=cache_dir, progress=_progress
    )
    data = {
        "model_id": keys.model_id,
        "vk_sha256": keys.vk_sha256,
        "logrows": keys.logrows,
        "circuit_version": keys.circuit_version,
        "srs": str(keys.srs_path),
        "dev_srs": keys.dev_srs,
        "keys": str(keys.directory),
    }
    _emit(
        data,
        as_json,
        f"model id   {keys.model_id}\nvk sha256  {keys.vk_sha256}\nlogrows    {keys.logrows}\nkeys in    {keys.directory}",
    )


@prove.command("run", hidden=True)
@program_argument
@input_option("One input row (.npy or .json).")
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the proof file."
)
@cache_dir_option
@json_option
def prove_run(file: Path, input_path: Path, output: Path, cache_dir: Path | None, as_json: bool) -> None:
    """Prove one inference row of FILE and write a self-describing proof file."""
    from aivm_jax import proofs
    from aivm_jax.runtime import read_input_file

    document = proofs.prove(
        aivm_jax.load(file), read_input_file(input_path), cache_dir=cache_dir, progress=_progress
    )
    proofs.write_proof(document, output)
    data = {
        "model_id": document["model_id"],
        "output_hash": document["output_hash"],
        "outputs": document["outputs"],
        "proving_seconds": document["proving_seconds"],
        "proof": str(output),
    }
    _emit(
        data,
        as_json,
        "\n".join(
            [
                f"model id     {data['model_id']}",
                f"output hash  {data['output_hash']}",
                f"outputs      {data['outputs'][0]}",
                f"proved in    {data['proving_seconds']} s -> {output}",
            ]
        ),
    )


@prove.command("verifier")
@program_argument
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory for Verifier.sol/.json (and vka.json with --reusable).",
)
@click.option(
    "--reusable",
    is_flag=True,
    help="EZKL's reusable verifier plus the model's VKA to register in it, instead of the "
    "model's own verifier (cheaper to call, but only if it fits the contract size limit).",
)
@cache_dir_option
@json_option
def prove_verifier(file: Path, output: Path, reusable: bool, cache_dir: Path | None, as_json: bool) -> None:
    """Write FILE's Solidity verifier and its compiled ABI and bytecode."""
    from aivm_jax import proofs

    program = aivm_jax.load(file)
    keys = proofs.load_keys(program.model_id, cache_dir)
    info = proofs.write_verifier(keys, output, progress=_progress, reusable=reusable)
    info.update(_record_verifier(program.model_id, info))
    _emit(info, as_json, "\n".join(f"{k:24s} {v}" for k, v in info.items()))


def _record_verifier(model_id: str, info: dict[str, Any]) -> dict[str, str]:
    """Record the generated verifier's code hash (and VKA digest) so that `aivm request` and
    `aivm node` can confirm a registered verifier; needs the chain extra."""
    try:
        from eth_utils import keccak

        from aivm_jax.chain import record_verifier
    except ImportError:
        return {}
    artifact = json.loads(Path(info["artifact"]).read_text())
    codehash = "0x" + keccak(bytes.fromhex(artifact["deployedBytecode"][2:])).hex()
    vka_digest = None
    if "vka" in info:
        words = json.loads(Path(info["vka"]).read_text())["vka"]
        vka_digest = "0x" + keccak(b"".join(bytes.fromhex(w[2:]) for w in words)).hex()
    path = record_verifier(model_id, codehash, vka_digest)
    return {
        "codehash": codehash,
        **({"vka_digest": vka_digest} if vka_digest else {}),
        "recorded_in": str(path),
    }


@main.command()
@click.argument("proof", type=click.Path(path_type=Path))
@click.option("--srs", type=click.Path(path_type=Path), help="SRS file (default: the one setup used).")
@cache_dir_option
@json_option
def verify(proof: Path, srs: Path | None, cache_dir: Path | None, as_json: bool) -> None:
    """Verify a proof file offline; exit 0 only if it is valid."""
    from aivm_jax import proofs

    checked = proofs.verify(proofs.read_proof(proof), cache_dir=cache_dir, srs=srs)
    data = {
        "valid": True,
        "model_id": checked.model_id,
        "output_hash": checked.output_hash,
        "outputs": checked.outputs.tolist(),
        "dev_srs": checked.dev_srs,
    }
    warning = "\n" + proofs.DEV_SRS_WARNING if checked.dev_srs else ""
    _emit(
        data,
        as_json,
        f"VALID proof\nmodel id     {checked.model_id}\noutput hash  {checked.output_hash}\noutputs      {data['outputs'][0]}{warning}",
    )


# --------------------------------------------------------------------------- chain

rpc_url_option = click.option(
    "--rpc-url",
    default="http://127.0.0.1:8545",
    show_default=True,
    envvar="AIVM_RPC_URL",
    help="JSON-RPC endpoint of the chain.",
)
key_option = click.option(
    "--key",
    envvar="AIVM_KEY",
    default=None,
    help="Hex private key that signs (default: the node's first unlocked account).",
)
deployments_option = click.option(
    "--deployments",
    type=click.Path(path_type=Path),
    envvar="AIVM_DEPLOYMENTS",
    default=None,
    help="File recording contract addresses per chain id (default ~/.cache/aivm/deployments.json).",
)


def _network(rpc_url: str, key: str | None, deployments: Path | None):
    from aivm_jax.chain import Chain, Network

    return Network.load(Chain.connect(rpc_url, key), deployments)


@main.group(cls=_AivmGroup)
def chain() -> None:
    """The AIVM contracts: a local development chain and deployment."""


@chain.command("devnet")
@click.option("--port", default=8545, show_default=True, help="Port on 127.0.0.1.")
def chain_devnet(port: int) -> None:
    """Run a local Hardhat node (funded dev accounts) on 127.0.0.1 until Ctrl-C."""
    from aivm_jax.chain._devnet import DEVNET_DIR, devnet_command, run_until_interrupted

    command = devnet_command(port)
    click.echo(f"starting {' '.join(command[-5:])} in {DEVNET_DIR}; Ctrl-C stops it", err=True)
    code, interrupted = run_until_interrupted(command, DEVNET_DIR)
    if interrupted:
        click.echo("devnet stopped", err=True)
        sys.exit(0)
    sys.exit(code)


@chain.command("deploy")
@rpc_url_option
@key_option
@deployments_option
@click.option(
    "--bond", default=10**16, show_default=True, help="Wei locked per commitment and slashed on a fault."
)
@click.option("--min-window", default=10, show_default=True, help="Shortest commit or reveal window (s).")
@click.option("--max-window", default=86_400, show_default=True, help="Longest commit or reveal window (s).")
@click.option(
    "--proof-window", default=3_600, show_default=True, help="How long a tied request waits for a proof (s)."
)
@json_option
def chain_deploy(
    rpc_url: str,
    key: str | None,
    deployments: Path | None,
    bond: int,
    min_window: int,
    max_window: int,
    proof_window: int,
    as_json: bool,
) -> None:
    """Deploy the registry and market and record their addresses for this chain id."""
    from aivm_jax.chain import Chain, Network, Windows

    try:
        windows = Windows(
            min_commit=min_window,
            max_commit=max_window,
            min_reveal=min_window,
            max_reveal=max_window,
            proof=proof_window,
        )
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    chain_ = Chain.connect(rpc_url, key)
    network = Network.deploy(chain_, bond=bond, windows=windows)
    path = network.save(deployments)
    data = {
        "chain_id": chain_.chain_id,
        "ModelRegistry": network.registry_address,
        "InferenceMarket": network.market_address,
        "deploy_block": network.deploy_block,
        "bond": bond,
        "windows": f"{min_window}-{max_window} s, proof {proof_window} s",
        "recorded_in": str(path),
    }
    _emit(data, as_json, "\n".join(f"{k:16s} {v}" for k, v in data.items()))


@main.command()
@program_argument
@click.option(
    "--uri", required=True, help="Where nodes fetch the program from (path, file:// or http(s)://)."
)
@click.option("--parent", default=None, help="Model id this is a new version of (you must own it).")
@rpc_url_option
@key_option
@deployments_option
@json_option
def register(
    file: Path,
    uri: str,
    parent: str | None,
    rpc_url: str,
    key: str | None,
    deployments: Path | None,
    as_json: bool,
) -> None:
    """Register a program's model id on chain with the URI to fetch it from."""
    network = _network(rpc_url, key, deployments)
    model_id = network.register(aivm_jax.load(file), uri, parent=parent)
    _emit(
        {"model_id": model_id, "uri": uri, "owner": network.chain.address}, as_json, f"registered {model_id}"
    )


@main.command()
@click.argument("model_id")
@input_option("Integer inputs (.npy or .json).")
@click.option("--fee", default=10**15, show_default=True, help="Fee in wei, shared by the agreeing nodes.")
@click.option("--quorum", default=2, show_default=True, help="Identical reveals needed to finalize.")
@click.option("--commit-window", default=30, show_default=True, help="Seconds for commitments.")
@click.option("--reveal-window", default=30, show_default=True, help="Seconds for reveals after that.")
@click.option("--wait", is_flag=True, help="Wait until the request finalizes and print the result.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait with --wait.")
@click.option(
    "--verifiers",
    type=click.Path(path_type=Path),
    default=None,
    help="Verifiers this machine generated (default ~/.cache/aivm/verifiers.json); a model whose "
    "registered verifier is not among them is refused.",
)
@rpc_url_option
@key_option
@deployments_option
@json_option
def request(
    model_id: str,
    input_path: Path,
    fee: int,
    quorum: int,
    commit_window: int,
    reveal_window: int,
    wait: bool,
    timeout: float,
    verifiers: Path | None,
    rpc_url: str,
    key: str | None,
    deployments: Path | None,
    as_json: bool,
) -> None:
    """Request inference of a registered model; the input travels inline with its hash.

    A model with a proof verifier is requested only if its registered verifier is the one
    its program generates (`aivm prove verifier` records it): a dishonest owner's verifier
    could accept any output.
    """
    from aivm_jax.runtime import read_input_file

    network = _network(rpc_url, key, deployments)
    network.check_verifier(model_id, verifiers)
    request_id = network.request(
        model_id,
        read_input_file(input_path),
        fee=fee,
        quorum=quorum,
        commit_window=commit_window,
        reveal_window=reveal_window,
    )
    data = network.wait_for_result(request_id, timeout) if wait else network.request_info(request_id)
    _emit(_jsonable_request(data), as_json, _describe_request(data))


@main.command()
@click.argument("request_id", type=int)
@rpc_url_option
@deployments_option
@json_option
def result(request_id: int, rpc_url: str, deployments: Path | None, as_json: bool) -> None:
    """Show a request's status and, once finalized, its agreed output hash."""
    data = _network(rpc_url, None, deployments).request_info(request_id)
    _emit(_jsonable_request(data), as_json, _describe_request(data))


def _jsonable_request(info: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, bytes) else "0x" + v.hex()) for k, v in info.items()}


def _describe_request(info: dict[str, Any]) -> str:
    lines = [f"request {info['request_id']}: {info['status']}", f"model id     {info['model_id']}"]
    if info["status"] == "finalized":
        how = (
            "a verified proof" if info["by_proof"] else f"{info['reveals']} reveals, quorum {info['quorum']}"
        )
        lines.append(f"output hash  {info['output_hash']} ({how})")
    else:
        lines.append(f"commits {info['commits']}, reveals {info['reveals']}, quorum {info['quorum']}")
    return "\n".join(lines)


@main.command()
@rpc_url_option
@key_option
@deployments_option
@click.option(
    "--models",
    "models_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory for fetched programs and the node's state.",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="State file (default: node-<chain id>-<market>-<address>.json in --models).",
)
@click.option("--poll", default=0.5, show_default=True, help="Seconds between polls.")
@click.option(
    "--min-fee", default=1, show_default=True, type=click.IntRange(min=0), help="Smallest fee served (wei)."
)
@click.option(
    "--max-window",
    default=3_600,
    show_default=True,
    type=click.IntRange(min=1),
    help="Longest commit or reveal window served (s).",
)
@click.option(
    "--min-reveal-window",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    help="Shortest reveal window served (s); a missed reveal is slashed.",
)
@click.option(
    "--max-lock",
    default=4 * 3_600,
    show_default=True,
    type=click.IntRange(min=1),
    help="Longest time a bond may stay locked (s), the proof window included.",
)
@click.option(
    "--input-dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Serve local input files only inside this directory (default: no local inputs).",
)
@click.option(
    "--input-scheme",
    "input_schemes",
    multiple=True,
    type=click.Choice(["http", "https"]),
    default=("https",),
    show_default=True,
    help="Network scheme accepted for input URIs; repeat for several.",
)
@click.option(
    "--max-input-mb",
    default=16.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Largest input served (inline or fetched).",
)
@click.option(
    "--max-model-mb",
    default=512.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Largest program fetched (also capped by its registered size).",
)
@click.option(
    "--max-memory-mb",
    default=8_192.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Most memory one request may need, by the program's static estimate.",
)
@click.option(
    "--download-timeout",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds one program or input download may take in all.",
)
@click.option(
    "--local-models/--no-local-models",
    default=True,
    show_default=True,
    help="Fetch programs registered at local paths (regular files only, checked against their id).",
)
@click.option(
    "--verifiers",
    type=click.Path(path_type=Path),
    default=None,
    help="Verifiers this node generated (default ~/.cache/aivm/verifiers.json); requests made "
    "with any other proof verifier are skipped.",
)
@click.option("--faulty", is_flag=True, hidden=True, help="Report wrong output hashes (tests of slashing).")
def node(
    rpc_url: str,
    key: str | None,
    deployments: Path | None,
    models_dir: Path,
    state_path: Path | None,
    poll: float,
    min_fee: int,
    max_window: int,
    min_reveal_window: int,
    max_lock: int,
    input_dir: Path | None,
    input_schemes: tuple[str, ...],
    max_input_mb: float,
    max_model_mb: float,
    max_memory_mb: float,
    download_timeout: float,
    local_models: bool,
    verifiers: Path | None,
    faulty: bool,
) -> None:
    """Run an AIVM node: stake, watch requests, infer, commit and reveal; resumes after a restart.

    Requests outside the policy (fee, windows, bond lock, input URI) are skipped, and any
    request whose input, program or work fails is refused, each with its reason in the state
    file; the node goes on serving the others.
    """
    import logging

    from aivm_jax.chain import Node, NodePolicy

    mib = 1 << 20
    try:
        policy = NodePolicy(
            min_fee=min_fee,
            max_commit_window=max_window,
            min_reveal_window=min_reveal_window,
            max_reveal_window=max_window,
            max_lock=max_lock,
            input_dir=input_dir,
            input_schemes=frozenset(input_schemes),
            max_input_bytes=int(max_input_mb * mib),
            max_model_bytes=int(max_model_mb * mib),
            max_infer_bytes=int(max_memory_mb * mib),
            download_timeout=download_timeout,
            local_models=local_models,
            verifiers=verifiers,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    network = _network(rpc_url, key, deployments)
    with Node(network, models_dir, state_path, policy=policy, faulty=faulty) as daemon:
        try:
            daemon.run(poll=poll)
        except KeyboardInterrupt:
            click.echo("node stopped; its state is saved", err=True)


@main.command()
@click.option("--model", default="digits-mlp", show_default=True, help="Zoo model to run the network with.")
@click.option(
    "--out",
    "out_dir",
    default="out",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Working directory.",
)
@click.option(
    "--proof/--no-proof",
    "with_proof",
    default=True,
    show_default=True,
    help="Also settle a request by a zk proof.",
)
@cache_dir_option
@json_option
def demo(model: str, out_dir: Path, with_proof: bool, cache_dir: Path | None, as_json: bool) -> None:
    """The main job: build a model, register it, three nodes agree on chain, print the result."""
    from aivm_jax.chain._demo import run_network_demo

    summary = run_network_demo(
        out_dir, model=model, with_proof=with_proof, cache_dir=cache_dir, progress=_progress
    )
    _emit(
        summary, as_json, "done: " + ("the network agreed" if summary["matches_local_infer"] else "MISMATCH")
    )
