"""Triton's CPU interpreter (TRITON_INTERPRET=1, how the tests run kernels without a GPU).

Importing this module applies the interpreter fix below once; kernels' launch code imports
``INTERPRET`` from here to pick their fixed, small test configurations.
"""

from __future__ import annotations

import os

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _patch_interpreter_index() -> None:
    """Let runtime loop bounds work under the interpreter with NumPy >= 2.4.

    Triton 3.6's interpreter holds scalars as 1-element arrays and converts them with int(array),
    which NumPy 2.4 refuses ("only 0-dimensional arrays can be converted"), so `range(0, n)` with a
    runtime n fails. Re-register the scalar's __index__ through the array's single element.
    """
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "mm_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched.mm_patched = True
    interpreter._patch_lang_tensor = patched


if INTERPRET:
    _patch_interpreter_index()

