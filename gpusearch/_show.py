"""Short, always-safe reprs of user values for error messages.

Shared by :mod:`gpusearch.metadata` and :mod:`gpusearch.filters`. ``repr()`` and
``str()`` refuse ints of more than 4300 digits (``sys.get_int_max_str_digits``)
with a ValueError of their own, which would replace the error we meant to raise;
:func:`show` writes such ints as ``<an int of N digits>`` instead, also inside
lists, tuples, dicts and sets, and cuts everything else short.
"""
from __future__ import annotations

import math
import reprlib
from typing import Any

__all__ = ["show"]


def _digits(x: int) -> int:
    x = abs(x)
    digits = int(math.log10(x)) + 1
    return digits + (x >= 10**digits) - (x < 10 ** (digits - 1))  # log10 rounds


class _Repr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() <= 128:
            return super().repr_int(x, level)
        return f"{'-' if x < 0 else ''}<an int of {_digits(x)} digits>"


_repr = _Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = 5
_repr.maxdict = 4


def show(value: Any, limit: int | None = None) -> str:
    """A repr of ``value`` for an error message: at most a few dozen characters per item.

    Nested containers can still add up to thousands of characters; with ``limit``
    the middle of a longer repr is cut out to leave ``limit`` characters.

    >>> show(10**5000)
    '<an int of 5001 digits>'
    >>> show([1, -(10**400)])
    '[1, -<an int of 401 digits>]'
    >>> len(show("x" * 10**6))
    40
    >>> show([["a" * 30] * 5] * 5, limit=30)
    "[['aaaaaaaaaaa...aaaaaaaaaa']]"
    """
    s = _repr.repr(value)
    if limit is not None and len(s) > limit:
        head = (limit - 3 + 1) // 2
        s = s[:head] + "..." + s[len(s) - (limit - 3 - head):]
    return s
