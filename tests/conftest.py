"""Session-wide test settings.

One persistent JAX compilation cache for the whole session, in the session's temporary directory: the
tools' subprocesses (``train.py``, ``eval.py``, ``benchmark.py``, ...) and the tools' ``main()`` run in
process share the programs they compile instead of each compiling them again, and no test reads or
writes the user's cache (``~/.cache/fcn_jax/xla``), so a run's time and results do not depend on
earlier runs. ``JAX_COMPILATION_CACHE_DIR`` is JAX's own setting, which ``fcn_jax.platform`` uses when
``FCN_JAX_COMPILATION_CACHE`` is not set; a test that sets either for its subprocesses still wins.

``early_runs``: a module's subprocesses that depend on no other test start with the module's first test
instead of in their own test, and run beside the tests before theirs (imports, tracing, the serial parts of
XLA's compilation and single-process phases leave one of two cores idle part of the time); their test then
checks what they did.
"""
import os
import subprocess

import pytest

# The suite runs on the CPU, also where libtpu is installed (requirements-dev.txt: the TPU compile-only tests):
# without a TPU, JAX would otherwise try libtpu's runtime at its first device query and libtpu would print
# its warnings to the stderr of every tool the tests run. The compile-only path needs no TPU runtime.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


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


@pytest.fixture(scope="session", autouse=True)
def session_user_cache(tmp_path_factory):
    """fcn_jax's user cache (the folder datasets' decode records) in the session's temporary directory, for
    the tests and the tools they start: no test reads or writes ``~/.cache``."""
    previous = os.environ.get("XDG_CACHE_HOME")
    path = str(tmp_path_factory.mktemp("user_cache"))
    os.environ["XDG_CACHE_HOME"] = path
    yield path
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


class EarlyRuns:
    """Subprocesses started before the test that checks them (see the module docstring). A module's
    autouse fixture starts them, for the tests that this session runs (:meth:`selected`); the test
    collects one with :meth:`result`. Output goes to files, so a run never waits for a reader; a run
    still going when the module ends is killed."""

    def __init__(self, request, directory):
        self._request, self._directory, self._runs = request, directory, {}

    def selected(self, test):
        """Whether this session runs the module's test function ``test`` (any of its parametrizations)."""
        return any(item.path == self._request.path and getattr(item, "originalname", item.name) == test
                   for item in self._request.session.items)

    def start(self, key, args, **popen):
        """Starts ``args`` (``subprocess.Popen`` keywords ``popen``) as the run ``key``."""
        out, err = (open(os.path.join(self._directory, f"{key}.{name}"), "w+") for name in ("out", "err"))
        self._runs[key] = (subprocess.Popen(args, stdout=out, stderr=err, text=True, **popen), out, err)

    def __contains__(self, key):
        return key in self._runs

    def result(self, key, timeout):
        """(exit code, stdout, stderr) of the run ``key``, once it ends (``timeout`` seconds at most)."""
        proc, out, err = self._runs[key]
        proc.wait(timeout=timeout)
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read())
        return proc.returncode, texts[0], texts[1]

    def close(self):
        for proc, out, err in self._runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
            err.close()


@pytest.fixture(scope="module")
def early_runs(request, tmp_path_factory):
    runs = EarlyRuns(request, str(tmp_path_factory.mktemp("early_runs")))
    yield runs
    runs.close()


# The modules that take longest (``pytest --durations``) run first: with two workers (pyproject's addopts)
# a long module left to the end would keep one worker busy while the other idles.
LONGEST_FIRST = ("test_train_loop.py", "test_learning.py", "test_model_contract.py", "test_train_step.py",
                 "test_checkpoint_faults.py", "test_fidelity.py", "test_folder_faults.py", "test_bn_fcns.py",
                 "test_output_faults.py", "test_tiling.py", "test_bn_weights.py", "test_interrupts.py",
                 "test_weights.py", "test_multimodal.py", "test_evaluate.py", "test_masked_buckets.py",
                 "test_accelerator_script.py", "test_topology.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: module order kept
