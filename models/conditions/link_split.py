"""Link one split's built pieces of another corpus into a corpus (symlinks), then re-index it.

    python -m scorestream.models.conditions.link_split OUT SOURCE SPLIT

Fine-tuning packs need pieces they do not build themselves: the paper's test takes
(finetune_v2.sh) or validation pairs (finetune_causal.sh).  Pieces already there are left alone.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def link_split(out: str | Path, source: str | Path, split: str) -> tuple[int, dict]:
    """Symlink ``source``'s pieces of ``split`` into ``out/pieces``; returns (linked now, new stats)."""
    from scorestream.models.corpus.build import write_index

    out, src = Path(out), Path(source) / "pieces"
    n = 0
    for pj in sorted(src.glob("*/piece.json")):
        if json.loads(pj.read_text())["split"] == split:
            dst = out / "pieces" / pj.parent.name
            if not dst.exists():
                os.symlink(pj.parent.resolve(), dst)
                n += 1
    return n, write_index(out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    n, stats = link_split(*argv)
    print(f"linked {n} {argv[2]} pieces; corpus now {stats['pieces']} pieces, {stats['audio_hours']} h, "
          f"{stats['aligned_pairs']} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
