"""Start-up cost, old tree against this one in one run: import, ``--help``, the napari reader (issue 30, point 4).

Three cases, each in a fresh interpreter with only the tree under test on ``PYTHONPATH`` (run from
an empty folder, so that neither checkout is found through the current directory):

- ``import napari_mirnet``;
- ``napari-mirnet --help`` (the CLI's ``main`` with ``--help``, so that the tree is chosen by
  ``PYTHONPATH`` and not by the installed entry point);
- the napari reader opening a result: ``napari_io.get_reader(path)(path)`` on an OME-Zarr store
  (a 3 x 512 x 512 uint8 image with its pyramid, written once by the new tree), then reading the
  pixels of level 0, as napari does to show it.

Each case runs ``--repeats`` times (5), alternating old and new; the table gives the median wall
time (``time.perf_counter`` around the child) and the median peak RSS (``/usr/bin/time -f %M``,
or the child's own ``ru_maxrss`` where that program is missing), their ratio new/old, and whether
the child had imported torch by its end.

    python benchmarks/startup.py [--old /work/base] [--new .] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "import napari_mirnet": "import napari_mirnet",
    "napari-mirnet --help": (
        "import contextlib, io, sys\n"
        "from napari_mirnet.cli import main\n"
        "sys.argv = ['napari-mirnet', '--help']\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main()\n"
    ),
    "napari reader opens a result": (
        "import sys, numpy as np\n"
        "from napari_mirnet.napari_io import get_reader\n"
        "path = sys.argv[1]\n"
        "(data, kwargs, kind), = get_reader(path)(path)\n"
        "np.asarray(data[0] if isinstance(data, list) else data)\n"
    ),
}
# around each case for one extra run: did it import torch? (the path is read first: --help sets sys.argv)
PROBE_START = "import sys as _s\n_probe = _s.argv.pop()\n"
PROBE_END = "\nopen(_probe, 'w').write(str('torch' in _s.modules))\n"
WRITE_STORE = (
    "import sys, numpy as np\n"
    "from napari_mirnet import io\n"
    "img = np.random.default_rng(0).integers(0, 255, (3, 512, 512), dtype=np.uint8)\n"
    "io.write_image(sys.argv[1], img, 'CYX')\n"
)
TIME = Path("/usr/bin/time").exists()


def run_child(tree: str, code: str, args: list[str], cwd: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``python -c code args`` with ``tree`` first on the path."""
    env = {**os.environ, "PYTHONPATH": tree, "NAPARI_MIRNET_THROUGHPUT": "off"}
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as rss_file, tempfile.TemporaryFile("w+") as err:
        cmd = [sys.executable, "-c", code, *args]
        if TIME:
            cmd = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (not all children's)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{tree}: {code!r} failed:\n{err.read()}")
        kb = int(rss_file.read().split()[-1]) if TIME else usage.ru_maxrss
    return wall, kb / 1024


def measure(trees: dict[str, str], repeats: int, store: str, cwd: str) -> dict:
    """{(case, tree label): (median s, median MB, torch imported)}."""
    results = {}
    for case, code in CASES.items():
        args = [store] if "reader" in case else []
        samples: dict[str, list] = {label: [] for label in trees}
        for _ in range(repeats):
            for label, tree in trees.items():  # alternating: a busy moment hits both trees
                samples[label].append(run_child(tree, code, args, cwd))
        for label, tree in trees.items():
            probe = Path(cwd) / f"torch-{label}.txt"
            probe.unlink(missing_ok=True)
            run_child(tree, PROBE_START + code + PROBE_END, [*args, str(probe)], cwd)
            walls, rss = zip(*samples[label])
            results[case, label] = (statistics.median(walls), statistics.median(rss), probe.read_text() == "True")
    return results


def table(results: dict, repeats: int) -> str:
    rows = [
        f"median of {repeats} runs each; python {sys.version.split()[0]}; peak RSS from "
        + ("/usr/bin/time -f %M" if TIME else "ru_maxrss"),
        f"{'case':<30} {'old s':>7} {'new s':>7} {'new/old':>8} {'old MB':>8} {'new MB':>8} {'new/old':>8}  torch old/new",
    ]
    for case in CASES:
        (t_old, m_old, torch_old), (t_new, m_new, torch_new) = results[case, "old"], results[case, "new"]
        rows.append(
            f"{case:<30} {t_old:7.2f} {t_new:7.2f} {t_new / t_old:8.2f} {m_old:8.0f} {m_new:8.0f} "
            f"{m_new / m_old:8.2f}  {'yes' if torch_old else 'no'}/{'yes' if torch_new else 'no'}"
        )
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="/work/base", help="checkout of the old code (default /work/base)")
    ap.add_argument("--new", default=str(Path(__file__).resolve().parents[1]), help="this checkout")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    trees = {"old": str(Path(args.old).resolve()), "new": str(Path(args.new).resolve())}
    with tempfile.TemporaryDirectory() as cwd:
        store = str(Path(cwd) / "result.zarr")
        run_child(trees["new"], WRITE_STORE, [store], cwd)
        for label, tree in trees.items():  # warm the file cache (and .pyc files) before timing
            for code in CASES.values():
                run_child(tree, code, [store], cwd)
        print(table(measure(trees, args.repeats, store, cwd), args.repeats))


if __name__ == "__main__":
    main()
