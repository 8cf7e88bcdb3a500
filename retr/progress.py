"""Progress bars for long loops: tqdm on stderr, off when ``RETR_PROGRESS=0`` or stderr is not a terminal."""

from __future__ import annotations

import os
import sys
from typing import Any


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", **kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    setting = os.environ.get("RETR_PROGRESS", "").lower()
    disable = setting in ("0", "off", "false") or (setting == "" and not sys.stderr.isatty())
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False, dynamic_ncols=True, **kwargs)
