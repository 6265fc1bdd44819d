"""Kill a writer with SIGKILL at random moments, many times; every reopen must show exactly the
last committed state: no committed document lost, no half-written document visible."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from m3rag import Collection
from m3rag.testing import random_outputs

CHILD = Path(__file__).with_name("_crash_writer.py")
KILLS = 20


def _replay(logfile: Path, generation: int) -> dict[str, str]:
    """Expected live ``id -> text`` after commits up to ``generation``."""
    expected: dict[str, str] = {}
    begins = {}
    for line in logfile.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "begin" in rec:
            begins[rec["begin"]] = rec
    for gen in range(1, generation + 1):
        rec = begins[gen]  # every committed generation logged its plan first
        for i in rec["add"]:
            expected[i] = f"text of {i}"
        for i in rec["delete"]:
            expected.pop(i, None)
        for i in rec["replace"]:
            expected[i] = f"replaced {i} at {gen}"
    return expected


def test_sigkill_at_random_moments_keeps_committed_state(tmp_path: Path) -> None:
    folder, logfile = tmp_path / "c", tmp_path / "log.jsonl"
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    kills = 0
    last_generation = 0
    for _ in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(folder), str(logfile)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 60)
            assert ready and child.stdout.readline() == "ready\n", "the writer did not start"
            time.sleep(rng.uniform(0.0, 0.9))  # it commits every few ms from here on
        finally:  # a writer that failed to start is not left running either
            child.send_signal(signal.SIGKILL)
            child.communicate()  # reaps it and closes the pipe
        kills += 1
        if not (folder / "manifest.json").exists():
            continue
        col = Collection.open(folder)  # writer: runs recovery
        try:
            gen = col.generation
            assert gen >= last_generation
            last_generation = gen
            logged = [json.loads(x) for x in logfile.read_text(encoding="utf-8").splitlines()]
            committed = [r["committed"] for r in logged if "committed" in r]
            # the manifest is the last logged commit, or one more that died before logging
            assert gen in ({committed[-1], committed[-1] + 1} if committed else {0, 1})
            expected = _replay(logfile, gen)
            assert col.count() == len(expected)
            assert set(col.ids()) == set(expected)
            if expected:
                sample = sorted(expected)[:: max(1, len(expected) // 25)]
                for doc in col.get(sample):
                    assert doc.text == expected[doc.id]  # type: ignore[index]
                # the newest committed batch is searchable on every path
                newest = [i for i in expected if i.startswith(f"g{gen}-")]
                if newest:
                    vec = random_outputs(20, seed=gen)
                    j = int(newest[0].split("-")[1])
                    assert col.search_dense(vec.dense_vecs[j], k=1).ids == [newest[0]]  # type: ignore[index]
                    every = col.search_lexical(vec.lexical_weights[j], k=len(expected))  # type: ignore[index]
                    assert newest[0] in every.ids
                    assert np.isfinite(
                        col.colbert_scores(
                            vec.colbert_vecs[j], col.search_dense(vec.dense_vecs[j], k=1).keys
                        )
                    ).all()  # type: ignore[index]
        finally:
            col.close()
    assert kills == KILLS
    assert last_generation > 5  # the writer made progress between kills
