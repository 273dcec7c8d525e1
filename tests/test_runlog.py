"""fcn_jax.runlog: log lines never land inside the progress bar's line on a terminal, and train.log keeps
every line with the run's provenance."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

from fcn_jax.runlog import LOG_FILE, RunLog

MESSAGES = [f"step {i}: validation mean IU {i}.00% (new best)" for i in (3, 6, 9)]


def test_log_lines_start_lines_on_a_shared_terminal_stream():
    """stdout and stderr on one stream, as on a terminal: every message begins a line (after the bar's
    line is cleared) and ends one, and the bar is redrawn after it, instead of 'loss=0.2]step 500: ...'."""
    script = textwrap.dedent(f"""
        import sys, time
        from tqdm import tqdm
        from fcn_jax.runlog import RunLog
        log = RunLog()
        bar = tqdm(total=12, unit="step", mininterval=0, miniters=1, file=sys.stderr)
        log.bar = bar
        messages = {MESSAGES!r}
        for step in range(1, 13):
            bar.update(1)
            bar.set_postfix(loss=0.2139)
            if step % 4 == 0:
                log(messages[step // 4 - 1])
        bar.close()
    """)
    proc = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout
    stream = proc.stdout
    for message in MESSAGES:
        at = stream.index(message)
        # the line it is on, from the last \r or \n before it: only blanks (the cleared bar) precede it
        start = max(stream.rfind("\r", 0, at), stream.rfind("\n", 0, at)) + 1
        assert stream[start:at].strip() == "", repr(stream[start - 40:at + len(message)])
        assert stream[at + len(message)] == "\n"
    assert re.search(r"12/12 \[[^]]*loss=0\.214", stream)  # the bar survives the messages


def test_train_log_keeps_lines_logged_before_the_workdir(tmp_path):
    shown = []
    log = RunLog(shown.append)
    log("config: variant fcn16s")  # before the workdir exists
    path = log.open(str(tmp_path))
    log("step 2: validation mean IU 12.00%")
    log.close()
    text = open(os.path.join(tmp_path, LOG_FILE)).read()
    assert path == os.path.join(tmp_path, LOG_FILE) and shown == ["config: variant fcn16s",
                                                                 "step 2: validation mean IU 12.00%"]
    assert re.search(r"date: .*\ncommand: .*\npython .*jax .*\ndevices: .*\ngit commit: .*\nconfig: variant fcn16s\n"
                     r"step 2: validation mean IU 12\.00%\n$", text)
