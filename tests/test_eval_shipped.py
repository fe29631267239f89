"""The shipped ONNX weights, through the serving stack, on a corpus they never saw.

A tiny corpus is built from music21's bundled scores (not in the training
corpora) and the paper's retrieval protocol is run with ``scorestream eval
retrieval``: the shipped models must retrieve far better than chance.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("verovio")
music21 = pytest.importorskip("music21")

REPO = Path(__file__).resolve().parent.parent
SF = "/usr/share/sounds/sf2/FluidR3_GM.sf2"


@pytest.fixture(scope="module")
def tiny_test_corpus(tmp_path_factory):
    if not Path(SF).is_file():
        pytest.skip("soundfonts missing: run scripts/setup.sh")
    from scorestream.models.corpus.build import build

    tmp = tmp_path_factory.mktemp("evalcorpus")
    src = tmp / "src"
    src.mkdir()
    for name, fn in (("schumann_clara/polonaise_op1n1", "polonaise.mxl"), ("joplin/maple_leaf_rag", "maple.mxl")):
        (src / fn).write_bytes(Path(str(music21.corpus.getWork(name))).read_bytes())
    cfg = tmp / "corpus.toml"
    cfg.write_text("[corpus]\nperformances = 1\nvalid_fraction = 0.0\ntest_fraction = 1.0\n"
                   "[timbres]\ntrain = [\"FluidR3_GM\"]\ntest = \"FluidR3_GM\"\n"
                   f"[timbres.soundfonts]\nFluidR3_GM = \"{SF}\"\n")
    build([src], tmp / "corpus", workers=1, config=cfg, progress=False)
    return tmp / "corpus"


def test_shipped_models_listed():
    from scorestream.models.evaluate import shipped_models

    names = shipped_models()
    assert names, "no shipped weights in models/weights"
    for n in names:
        card = json.loads((REPO / "models" / "weights" / f"{n}.json").read_text())
        assert card["config"]["embed_dim"] == 32
    total = sum(p.stat().st_size for p in (REPO / "models" / "weights").glob("*.onnx"))
    assert total <= 10 * 1024 * 1024


def test_eval_retrieval_cli_beats_chance(tiny_test_corpus, tmp_path):
    out = tmp_path / "r.json"
    md = tmp_path / "r.md"
    r = subprocess.run([sys.executable, "-m", "scorestream.cli", "eval", "retrieval", "--corpus", str(tiny_test_corpus),
                        "--candidates", "400", "--json", str(out), "--markdown", str(md)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    n = res["protocol"]["candidates"]
    assert 300 <= n <= 400
    chance_mrr = float(np.mean(1.0 / np.arange(1, n + 1)))
    for name, m in res["models"].items():
        for d in ("A2S", "S2A"):
            assert m[d]["MRR"] > 4 * chance_mrr, (name, d, m[d])
            assert m[d]["MR"] < n / 8
    assert "| A2S |" in md.read_text()


def test_eval_errors_are_clear(tmp_path):
    r = subprocess.run([sys.executable, "-m", "scorestream.cli", "eval", "retrieval", "--corpus", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "not a corpus folder" in r.stderr


def test_corpus_protocol_timbre_choice(tiny_test_corpus):
    """--timbre picks another condition (for model selection on the valid split); the default
    stays the paper's held-out-timbre, tempo-1.0 condition."""
    from scorestream.models.evaluate import corpus_protocol

    sel, facts = corpus_protocol(tiny_test_corpus, "test", 100)
    assert facts["tempo"] == 1.0 and facts["timbre"] == "FluidR3_GM"
    sel_any, facts_any = corpus_protocol(tiny_test_corpus, "test", 100, timbre="any")
    assert facts_any["tempo"] == "any" and facts_any["pool"] == facts["pool"]  # one take per piece: the same pool
    assert [(p.id, j) for p, j, *_ in sel_any] == [(p.id, j) for p, j, *_ in sel]
    with pytest.raises(ValueError, match="timbre 'NoSuchFont'"):
        corpus_protocol(tiny_test_corpus, "test", 100, timbre="NoSuchFont")
    with pytest.raises(ValueError, match="--timbre any"):
        corpus_protocol(tiny_test_corpus, "valid", 100)
