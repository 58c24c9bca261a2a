"""The two OpenAI APIs servebench drives, spelt one way everywhere: ``chat`` and ``completions``.

``completions`` is the endpoint's own name (``/v1/completions``). Evals once wrote ``completion``: that spelling
is still read (committed matrix files and run folders hold it) with a warning, and becomes ``completions``.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

OLD_COMPLETIONS = "completion"


def _accept_old_spelling(value: Any) -> Any:
    if value == OLD_COMPLETIONS:
        warnings.warn("api: completion is deprecated; write api: completions (the endpoint's name)",
                      FutureWarning, stacklevel=2)
        return "completions"
    return value


Api = Annotated[Literal["chat", "completions"], BeforeValidator(_accept_old_spelling)]
