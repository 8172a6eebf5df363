"""Plot validation PSNR against training time for training runs (their ``*.val.jsonl`` logs).

    python benchmarks/plot_validation.py runs/d16/*.val.jsonl -o docs/validation_curves.png \
        --reference "shipped file=31.83"

Each log is what ``training.train(..., validation=...)`` writes next to its checkpoint; the marked
point of each curve is the checkpoint the validation split chose. ``--reference LABEL=DB`` draws a
dashed line at a fixed validation PSNR (e.g. the file a fine-tune started from, measured on the same
pairs), which the logs do not hold: they start after the first ``val_every`` steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot(
    logs: list[str | Path],
    out: str | Path,
    title: str = "validation PSNR against training time",
    references: dict[str, float] | None = None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for path in logs:
        recs = load(path)
        if not recs:
            continue
        t = [r["elapsed_s"] / 60 for r in recs]
        v = [r["val_psnr"] for r in recs]
        label = Path(path).name.split(".")[0]
        (line,) = ax.plot(t, v, marker=".", label=label)
        best = max(range(len(v)), key=v.__getitem__)
        ax.plot(t[best], v[best], "o", ms=9, mfc="none", color=line.get_color())
    for label, db in (references or {}).items():
        ax.axhline(db, ls="--", lw=1, color="gray")
        ax.annotate(f"{label} ({db:.2f} dB)", (0.01, db), xycoords=("axes fraction", "data"), va="bottom", fontsize=8)
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("mean validation PSNR (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", help="*.val.jsonl files")
    ap.add_argument("-o", "--out", default="docs/validation_curves.png")
    ap.add_argument(
        "--reference", action="append", default=[], metavar="LABEL=DB", help="a dashed line at DB (repeatable)"
    )
    ap.add_argument("--title", default="validation PSNR against training time")
    args = ap.parse_args(argv)
    refs = {}
    for item in args.reference:
        label, sep, db = item.rpartition("=")
        try:
            refs[label] = float(db)
        except ValueError:
            sep = ""
        if not sep or not label:
            ap.error(f"--reference takes LABEL=DB (a number of dB), got {item!r}")
    print(plot(args.logs, args.out, args.title, refs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
