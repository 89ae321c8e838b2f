"""AIVM programs: the graph data model and its canonical, content-addressed file format."""

from aivm_jax.program._format import FORMAT_VERSION, from_bytes, load, save, to_bytes
from aivm_jax.program._program import Node, Program, ResourceEstimate, ValueSpec

__all__ = [
    "FORMAT_VERSION",
    "Node",
    "Program",
    "ResourceEstimate",
    "ValueSpec",
    "from_bytes",
    "load",
    "save",
    "to_bytes",
]
