"""Session-wide test settings.

One persistent JAX compilation cache for the whole session, in the session's temporary directory: the
tools' subprocesses (``train.py``, ``eval.py``, ``benchmark.py``, ...) and the tools' ``main()`` run in
process share the programs they compile instead of each compiling them again, and no test reads or
writes the user's cache (``~/.cache/fcn_jax/xla``), so a run's time and results do not depend on
earlier runs. ``JAX_COMPILATION_CACHE_DIR`` is JAX's own setting, which ``fcn_jax.platform`` uses when
``FCN_JAX_COMPILATION_CACHE`` is not set; a test that sets either for its subprocesses still wins.
"""
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def session_compilation_cache(tmp_path_factory):
    if "FCN_JAX_COMPILATION_CACHE" in os.environ:  # the user's explicit choice (a directory or 'off')
        yield os.environ["FCN_JAX_COMPILATION_CACHE"]
        return
    path = str(tmp_path_factory.mktemp("jax_compilation_cache"))
    previous = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    import jax
    old_dir = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", path)  # in process too (what a tool's main() would do)
    yield path
    jax.config.update("jax_compilation_cache_dir", old_dir)
    if previous is None:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = previous
