"""The int8 contract every model test asserts, in one place.

Per op, the int8 model must equal the fake-quant model it was converted from, up to float32
rounding near-ties (127.4999 vs 127.5): ``replay_ops`` feeds each int8 op its own int8 inputs
through the matching fake-quant op. Measured over the zoo at 32x32: at most 4 differing elements
in 2.3 M, one grid step each. At the output of a deep random-init net one such flip can spread
(measured up to 0.076 rel_l2 on HENet), hence the looser output bound.
"""

from __future__ import annotations

from qat.quant.verify import VerifyResult

OP_MISMATCH_FRACTION = 1e-4
OUTPUT_REL_L2 = 0.15


def assert_int8_contract(r: VerifyResult, min_compared: int = 10_000, output_rel_l2: float = OUTPUT_REL_L2) -> None:
    """``check_model`` clean, nothing left in float, int8 == fake-quant per op, output close."""
    assert r.check.ok and not r.check.warnings, str(r.check)
    assert not r.unconverted, r.unconverted
    assert r.ops["compared"] >= min_compared, r.ops
    assert r.ops["mismatched"] <= OP_MISMATCH_FRACTION * r.ops["compared"], r.ops
    assert r.ops["worst_steps"] <= 1.0 + 1e-3, r.ops
    assert r.agreement["rel_l2"] <= output_rel_l2, r.agreement
