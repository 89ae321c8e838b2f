"""Hugging Face folders (config.json + model.safetensors + tokenizer.json) into AIVM programs.

`import_folder` reads the folder's ``config.json`` and dispatches on ``model_type``:
``bert`` encoders (`aivm_jax.quant.hf._bert`), ``gpt2`` decoders (`aivm_jax.quant.hf._gpt2`).
"""

from aivm_jax.quant.hf._folder import SUPPORTED_MODEL_TYPES, HfImportError, import_folder, read_config

__all__ = ["SUPPORTED_MODEL_TYPES", "HfImportError", "import_folder", "read_config"]
