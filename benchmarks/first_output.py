"""Time from ``napari-mirnet restore`` start to its first output on stderr, and in total (issue 15).

A 512 x 512 RGB uint8 image (the noisy astronaut sample), the shipped denoiser, on the CPU; each
version of the code runs as a real process twice (the second run finds the model file and the
libraries in the OS cache). "before" is the commit before the engine refactor, checked out with
``git worktree add /tmp/before 14dd2a6``. Output: a table on stdout and in
benchmarks/results/first_output.txt.

Columns: first stderr = any output (the new code's "loading model and planning..." line; the old
code's first output is its bar); bar = the tqdm bar's first frame; first tile = the first frame
that counts a finished tile; total = process exit.

    python benchmarks/first_output.py [--before /tmp/before] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FRAME = re.compile(r"(\d+)/(\d+) \[")


def _timed_run(code: Path, image: Path, out: Path, cwd: Path) -> dict:
    """Run the CLI from ``code`` and timestamp its stderr as it arrives."""
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "napari_mirnet.cli",
        "restore",
        str(image),
        "-o",
        str(out),
        "--task",
        "denoise",
        "--device",
        "cpu",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    marks: dict[str, float] = {}
    text = []

    def read():
        buf = ""
        while chunk := proc.stderr.read1(4096):
            now = time.perf_counter() - t0
            marks.setdefault("first_stderr", now)
            buf += chunk.decode(errors="replace")
            text.append(chunk.decode(errors="replace"))
            for m in FRAME.finditer(buf):
                marks.setdefault("bar", now)
                if int(m.group(1)) >= 1:
                    marks.setdefault("first_tile", now)
            buf = buf[-200:]

    reader = threading.Thread(target=read)
    reader.start()
    rc = proc.wait()
    marks["total"] = time.perf_counter() - t0
    reader.join()
    if rc != 0:
        raise RuntimeError(f"{cmd} failed ({rc}):\n{''.join(text)[-2000:]}")
    return marks


def _check_code(code: Path, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.run(
        [sys.executable, "-c", "import napari_mirnet.cli as c; print(c.__file__)"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="/tmp/before", help="checkout of the code before the refactor")
    ap.add_argument("--repeats", type=int, default=1, help="pairs of (first, second) runs per version")
    args = ap.parse_args()
    from PIL import Image
    from skimage import data

    versions = {"before (14dd2a6)": Path(args.before), "now": ROOT}
    lines = []

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        noisy = np.clip(data.astronaut() + np.random.default_rng(0).normal(0, 25, (512, 512, 3)), 0, 255)
        image = tmp / "noisy.png"
        Image.fromarray(noisy.round().astype(np.uint8)).save(image)
        for name, code in versions.items():
            where = _check_code(code, tmp)
            assert where.startswith(str(code)), f"{name}: imported {where}, not {code}"
        git = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        say("napari-mirnet restore noisy.png (512x512 RGB uint8) -o out.png --task denoise --device cpu")
        say(
            f"tree HEAD {git} (+ working tree); {os.cpu_count()} CPUs; load average before: "
            f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}"
        )
        rows = []
        for _ in range(args.repeats):
            for run in ("first", "second"):  # versions interleaved, so that load drifts hit both
                for name, code in versions.items():
                    out = tmp / f"out-{len(rows)}.png"
                    marks = _timed_run(code, image, out, tmp)
                    rows.append((name, run, marks))
                    print(f"  {name:17s} {run:6s} {marks}", file=sys.stderr, flush=True)
        say("")
        say(f"{'code':17s} {'run':6s} {'first stderr':>12s} {'bar':>8s} {'first tile':>10s} {'total':>8s}   (seconds)")
        for name, run, m in rows:
            cells = [f"{m[k]:.1f}" if k in m else "-" for k in ("first_stderr", "bar", "first_tile", "total")]
            say(f"{name:17s} {run:6s} {cells[0]:>12s} {cells[1]:>8s} {cells[2]:>10s} {cells[3]:>8s}")
        say("")

        def mean(name, run, key):
            vals = [m[key] for n, r, m in rows if n == name and r == run and key in m]
            return sum(vals) / len(vals) if vals else float("nan")

        old, new = "before (14dd2a6)", "now"
        for run in ("first", "second"):
            ratio = {k: mean(old, run, k) / mean(new, run, k) for k in ("first_stderr", "first_tile", "total")}
            say(
                f"{run} run, before / now: first stderr {ratio['first_stderr']:.1f}x, "
                f"first tile {ratio['first_tile']:.2f}x, total {ratio['total']:.2f}x"
            )
        say(
            f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())} (the machine runs other jobs: "
            "compare the versions within one table only)"
        )
    out = ROOT / "benchmarks" / "results" / "first_output.txt"
    out.write_text("\n".join(lines) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
