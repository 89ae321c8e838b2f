"""Reading a Hugging Face folder and dispatching on its ``model_type``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aivm_jax._errors import AivmError
from aivm_jax.program import Program

__all__ = ["SUPPORTED_MODEL_TYPES", "HfImportError", "import_folder", "read_config"]

SUPPORTED_MODEL_TYPES = ("bert", "gpt2")
"""The ``model_type`` values `import_folder` imports."""


class HfImportError(AivmError, ValueError):
    """A Hugging Face folder that cannot be imported: missing files, an unsupported
    ``model_type``, a config or weights that do not match each other."""


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json`` as a dict.

    Raises:
      HfImportError: the folder or its ``config.json`` is missing or not JSON.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HfImportError(
            f"{folder} is not a folder; pass a Hugging Face model folder (config.json, weights)"
        )
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise HfImportError(f"{folder} has no config.json; is it a Hugging Face model folder?") from None
    except (OSError, ValueError) as error:
        raise HfImportError(f"{path} is not readable JSON: {error}") from None
    if not isinstance(config, dict):
        raise HfImportError(f"{path} is not a JSON object")
    return config


def import_folder(
    folder: Path, *, name: str | None = None, progress: Callable[[str], None] = lambda _: None, **options: Any
) -> Program:
    """Import the Hugging Face model in ``folder`` as an int8 program.

    Raises:
      HfImportError: the folder is not importable (the message says why and what is supported).
    """
    folder = Path(folder)
    config = read_config(folder)
    model_type = config.get("model_type")
    if model_type == "bert":
        from aivm_jax.quant.hf._bert import import_bert

        return import_bert(folder, config, name=name, progress=progress, **options)
    if model_type == "gpt2":
        from aivm_jax.quant.hf._gpt2 import import_gpt2

        return import_gpt2(folder, config, name=name, progress=progress, **options)
    raise HfImportError(
        f"{folder}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )
