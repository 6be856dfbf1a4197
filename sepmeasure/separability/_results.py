"""What the result dataclasses of the separability measures share.

:class:`~sepmeasure.separability.hull.HullDistance`,
:class:`~sepmeasure.separability.mdlsm.MDLSM` and
:class:`~sepmeasure.separability.subset.SubsetFraction` each carry a certified interval
``[lower, upper]``, a few tensors and scalar fields; :class:`CertifiedResult` gives them one
``gap``, ``to_dict`` and ``__repr__``.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any


class CertifiedResult:
    """Mixin for a frozen result dataclass with certified ``lower`` and ``upper`` bounds.

    The dataclass must be declared with ``repr=False`` (otherwise its generated ``__repr__``
    replaces this one) and may set two class attributes, without annotations:

    * ``_tensor_fields`` — the fields left out of :meth:`to_dict` (default ``("normal",)``);
    * ``_repr_fields`` — the fields :meth:`__repr__` shows, in order: those annotated
      ``float`` with 6 significant digits, ``str`` quoted, others as they print.
    """

    _tensor_fields: tuple[str, ...] = ("normal",)
    _repr_fields: tuple[str, ...] = ()

    lower: float
    upper: float

    @property
    def gap(self) -> float:
        """``upper - lower``."""
        return self.upper - self.lower

    def to_dict(self) -> dict[str, Any]:
        """The scalar fields, for a table row (``gap`` right after ``upper``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in self._tensor_fields:
                continue
            out[f.name] = getattr(self, f.name)
            if f.name == "upper":
                out["gap"] = self.gap
        return out

    def __repr__(self) -> str:
        kinds = {f.name: f.type for f in fields(self)}
        parts = []
        for name in self._repr_fields:
            value, kind = getattr(self, name), kinds[name]
            if kind in ("float", float):
                text = format(value, ".6g")
            elif kind in ("str", str):
                text = repr(value)
            else:
                text = str(value)
            parts.append(f"{name}={text}")
        return f"{type(self).__name__}({', '.join(parts)})"
