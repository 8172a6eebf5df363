"""The budget table of issue 37: is the model that fine-tuning returns ever worse than its source?

For each noise type of benchmarks/finetune.py and each budget in CPU minutes: the shipped gray model's
PSNR, the fine-tuned model's, their difference, which model the run kept and the pairing mode it used.
Goal: fine-tuned never more than 0.05 dB below shipped, at every budget and on every noise type.

Run through benchmarks/finetune.py (``--budgets 1,3,10 --methods shipped,finetuned [--noise NAME ...]
[--images packages]``) or directly (``python benchmarks/finetune_budgets.py --budgets 1,3,10``).
Rows are merged into ``benchmarks/results/finetune_budgets.json`` (one per images x noise x budget x
method; a row run again replaces the saved one), so the table can be built in slices, one noise type
per process; ``finetune_budgets.txt`` is written from all saved rows. ``--quick`` uses a tiny stack and
writes ``finetune_budgets_quick.*`` instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import finetune as fb

#: the goal: fine-tuned at most this far below the shipped model (dB)
TOLERANCE_DB = 0.05
KEY = ("images", "noise", "budget_min", "method")


def run(budgets: str, noises, methods, images: str = "synthetic", quick: bool = False) -> int:
    """Fill the budget table for ``noises`` x ``budgets`` (comma-separated CPU minutes)."""
    import torch

    torch.set_num_threads(1)
    fb.git_commit()  # the code this process runs (read once, before the package is imported)
    minutes = [float(b) for b in budgets.split(",")]
    tuned = [m for m in methods if m in fb.FINETUNED] or ["finetuned"]
    z, size, n_eval = (4, 96, 2) if quick else (16, 256, 6)
    clean, idx, _about = fb.make_clean(images, z, size, n_eval)
    path = fb.RESULTS / ("finetune_budgets_quick.json" if quick else "finetune_budgets.json")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in noises:
            d = fb.prepare(kind, clean)
            t0, w0 = time.process_time(), time.perf_counter()
            shipped = d["score"](fb.run_shipped(d["noisy"][idx]), idx)
            ship_cost = {"cpu_s": round(time.process_time() - t0, 1), "wall_s": round(time.perf_counter() - w0, 1)}
            print(f"[{kind}] shipped {shipped:.3f} dB {ship_cost}", flush=True)
            for m in minutes:
                for method in tuned:
                    row = one_row(d, idx, kind, m, method, shipped, Path(tmp), images)
                    row["shipped_cost"] = ship_cost
                    save(path, row)
                    print(f"[{kind}] {m:g} min {method}: {row}", flush=True)
    write_table(path)
    return 0


def one_row(d: dict, idx, kind: str, minutes: float, method: str, shipped: float, tmp: Path, images: str) -> dict:
    """Fine-tune for ``minutes`` CPU minutes in ``method``'s mode and score the model it returns."""
    ft_path, info = fb.run_finetune(d["noisy"], 60.0 * minutes, tmp, **fb.FINETUNED[method])
    tuned = d["score"](fb.run_shipped(d["noisy"][idx], ft_path), idx)
    return {
        "images": images,
        "noise": kind,
        "budget_min": minutes,
        "method": method,
        "shipped": round(shipped, 3),
        "finetuned": round(tuned, 3),
        "delta": round(tuned - shipped, 3),
        **{k: info.get(k) for k in ("kept", "pairs", "steps", "selection", "noise_correlation", "unchanged")},
        "cpu_s": info["cpu_s"],
        "wall_s": info["wall_s"],
        "commit": fb.git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def save(path: Path, row: dict) -> None:
    """Merge ``row`` into the rows saved at ``path`` (replacing one with the same key), under a lock:
    slices of the table run in parallel processes."""
    import fcntl

    # the lock file lives outside the repository (no stray untracked file beside the results)
    with open(Path(tempfile.gettempdir()) / f"napari-mirnet-{path.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = json.loads(path.read_text()) if path.is_file() else []
        rows = [r for r in rows if tuple(r.get(k) for k in KEY) != tuple(row[k] for k in KEY)] + [row]
        order = {n: i for i, n in enumerate(fb.NOISES)}
        rows.sort(key=lambda r: (r["images"], order.get(r["noise"], 99), r["budget_min"], r["method"]))
        path.write_text(json.dumps(rows, indent=1))
        write_table(path, echo=False)  # after every row: a slice cut short still leaves its table


def write_table(path: Path, echo: bool = True) -> list[str]:
    """The table and its goal line, from every row saved at ``path``, to the .txt beside it."""
    rows = json.loads(path.read_text()) if path.is_file() else []
    lines = [
        "Fine-tuned vs shipped gray model at each budget (benchmarks/finetune_budgets.py); PSNR in dB on the",
        "held-out planes of benchmarks/finetune.py's data; budget in CPU minutes of one thread (the whole",
        f"finetune call); goal: fine-tuned never more than {TOLERANCE_DB} dB below shipped.",
        "",
        f"{'images':10s} {'noise':20s} {'min':>5s} {'method':15s} {'shipped':>8s} {'tuned':>8s} {'delta':>7s} "
        f"{'kept':11s} {'pairs':7s} {'steps':>5s} {'cpu_s':>6s} {'wall_s':>6s} commit",
    ]
    for r in rows:
        lines.append(
            f"{r['images']:10s} {r['noise']:20s} {r['budget_min']:5g} {r['method']:15s} {r['shipped']:8.2f} "
            f"{r['finetuned']:8.2f} {r['delta']:+7.2f} {str(r.get('kept') or '-'):11s} {str(r.get('pairs') or '-'):7s} "
            f"{r.get('steps') or 0:5d} {r['cpu_s']:6.0f} {r['wall_s']:6.0f} {r['commit']}"
        )
    worst = min(rows, key=lambda r: r["delta"], default=None)
    if worst is not None:
        bad = [r for r in rows if r["delta"] < -TOLERANCE_DB]
        lines += [
            "",
            f"goal (fine-tuned >= shipped - {TOLERANCE_DB} dB in every row): {'MISSED' if bad else 'met'} "
            f"({len(rows) - len(bad)}/{len(rows)} rows; worst {worst['delta']:+.3f} dB: {worst['noise']}, "
            f"{worst['budget_min']:g} min, {worst['method']})",
        ]
        for field in ("selection", "noise_correlation", "unchanged"):
            lines += [
                f"{field} {r['images']} {r['noise']} {r['budget_min']:g} min {r['method']}: {json.dumps(r[field])}"
                for r in rows
                if r.get(field)
            ]
    path.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    if echo:
        print("\n".join(lines))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", default="1,3,10", help="CPU minutes, comma-separated")
    ap.add_argument("--noise", choices=fb.NOISES, action="append", help="noise type(s) (default: all)")
    ap.add_argument("--methods", default="shipped,finetuned", help=f"fine-tuned variants of {tuple(fb.FINETUNED)}")
    ap.add_argument("--images", choices=("synthetic", "packages"), default="synthetic")
    ap.add_argument("--quick", action="store_true", help="tiny stack; writes finetune_budgets_quick.*")
    ap.add_argument("--table", action="store_true", help="only write the table from the saved rows")
    args = ap.parse_args(argv)
    if args.table:
        write_table(fb.RESULTS / "finetune_budgets.json")
        return 0
    return run(args.budgets, args.noise or fb.NOISES, args.methods.split(","), args.images, args.quick)


if __name__ == "__main__":
    sys.exit(main())
