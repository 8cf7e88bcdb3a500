"""Progress bars for long loops: tqdm on stderr, off when ``RETR_PROGRESS=0`` or stderr is not a terminal.

Only the outermost bar shows: a build's one bar over all documents hides the bars of the
encoding and indexing steps it runs for each chunk (in any thread).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any, Iterator

_open_bars = 0
_lock = threading.Lock()


@contextlib.contextmanager
def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", **kwargs: Any) -> Iterator[Any]:
    from tqdm.auto import tqdm

    global _open_bars
    setting = os.environ.get("RETR_PROGRESS", "").lower()
    with _lock:
        nested = _open_bars > 0
        _open_bars += 1
    disable = nested or setting in ("0", "off", "false") or (setting == "" and not sys.stderr.isatty())
    try:
        with tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False, dynamic_ncols=True,
                  **kwargs) as bar:
            yield bar
    finally:
        with _lock:
            _open_bars -= 1
