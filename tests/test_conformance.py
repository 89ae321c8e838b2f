"""The conformance check passes on this machine and catches a machine that computes differently."""

from __future__ import annotations

import numpy as np

from aivm_jax.conformance import load_op_cases, op_cases, run_conformance
from aivm_jax.ops import OPSET, reference


def test_this_machine_is_conformant():
    report = run_conformance()
    assert report["conformant"], report["backends"]
    assert set(report["backends"]) >= {"numpy-reference", "cpu"}


def test_vectors_cover_every_op_and_match_a_fresh_reference_run():
    cases = load_op_cases()
    assert {op for op, *_ in cases} == set(OPSET)
    regenerated = list(op_cases())
    assert len(regenerated) == len(cases)
    for (op, attrs, operands, expected), (op2, _, operands2) in zip(cases, regenerated):
        assert op == op2
        for a, b in zip(operands, operands2):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(getattr(reference, op)(*operands, **attrs), expected)


def test_a_machine_that_rounds_differently_is_caught(monkeypatch):
    from dataclasses import replace

    import aivm_jax.conformance._check as check

    def round_half_even_requantize(x, m, s, *, out_dtype):  # what a careless port might do
        import jax.numpy as jnp

        with __import__("jax").enable_x64(True):
            real = x.astype(jnp.float64) * m.astype(jnp.float64) / jnp.exp2(s.astype(jnp.float64))
            info = jnp.iinfo(out_dtype)
            return jnp.clip(jnp.round(real), info.min, info.max).astype(out_dtype)

    patched = dict(OPSET)
    patched["requantize"] = replace(OPSET["requantize"], lowering=round_half_even_requantize)
    monkeypatch.setattr(check, "OPSET", patched)
    report = check.run_conformance()
    assert not report["conformant"]
    assert any("requantize" in f for f in report["backends"]["cpu"]["failures"])
    assert not report["backends"]["numpy-reference"]["failures"]
