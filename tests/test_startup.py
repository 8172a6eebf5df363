"""Start-up without torch: the package, the engine and the napari reader/writer import no torch; restore still runs.

Each check runs in a fresh interpreter (the test process has long imported torch). The CLI's parser
and usage errors are checked in test_cli.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SAFETY_S

import napari_mirnet
from napari_mirnet import io as mio

#: the checkout under test (not an installed copy): the child imports the same code
ROOT = str(Path(napari_mirnet.__file__).resolve().parents[1])

#: modules whose import must not load torch (those that run a model import it when they run)
TORCH_FREE = [
    "napari_mirnet",
    "napari_mirnet.engine",
    "napari_mirnet.engine.digest",
    "napari_mirnet.engine.execution",
    "napari_mirnet.engine.graph",
    "napari_mirnet.engine.heap",
    "napari_mirnet.engine.memory",
    "napari_mirnet.engine.plan",
    "napari_mirnet.engine.quality",
    "napari_mirnet.engine.run",
    "napari_mirnet.engine.sinks",
    "napari_mirnet.engine.source",
    "napari_mirnet.engine.steps",
    "napari_mirnet.devices",
    "napari_mirnet.model_config",
    "napari_mirnet.napari_io",
    "napari_mirnet.qc",
    "napari_mirnet.tasks",
]


def _child(code: str, *args: str) -> str:
    """Run ``code`` in a new interpreter on this checkout; its stdout (a failure shows its stderr)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env["NAPARI_MIRNET_THROUGHPUT"] = "off"  # a restore in the child reads no measured speeds
    r = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=SAFETY_S, env=env, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


_NO_TORCH = "assert 'torch' not in sys.modules, 'torch was imported'"


@pytest.mark.parametrize("module", TORCH_FREE)
def test_import_loads_no_torch(module):
    _child(f"import importlib, sys; importlib.import_module({module!r}); {_NO_TORCH}")


def test_public_names_are_there_and_cheap_ones_load_no_torch():
    out = _child(
        "import sys, napari_mirnet as nm\n"
        "names = sorted(nm.__all__)\n"
        "assert set(names) <= set(dir(nm)), set(names) - set(dir(nm))\n"
        "print(nm.__version__, sorted(nm.TASKS), nm.MIRNetConfig().n_feat)\n"
        f"{_NO_TORCH}\n"
        "assert callable(nm.restore) and callable(nm.finetune) and callable(nm.load_model)\n"
        "assert issubclass(nm.WeightsError, Exception) and nm.MIRNetV2.__name__ == 'MIRNetV2'\n"
    )
    version, tasks, n_feat = out.split(maxsplit=1)[0], out.split("[", 1)[1], out.split()[-1]
    assert version == napari_mirnet.__version__
    assert "'denoise'" in tasks and n_feat == "80"


def test_public_names_are_the_library_objects():
    from napari_mirnet.api import restore
    from napari_mirnet.training.self_supervised import finetune

    assert napari_mirnet.restore is restore
    assert napari_mirnet.finetune is finetune  # the function, not a module of the same name
    with pytest.raises(AttributeError):
        napari_mirnet.no_such_name  # noqa: B018


def _store(tmp_path) -> str:
    path = str(tmp_path / "result.zarr")
    img = np.random.default_rng(0).integers(0, 255, (3, 40, 48), dtype=np.uint8)
    mio.write_image(path, img, "CYX")
    return path


def test_napari_reader_reads_pixels_without_torch(tmp_path):
    path = _store(tmp_path)
    out = _child(
        "import sys, numpy as np\n"
        "from napari_mirnet.napari_io import get_reader\n"
        "path = sys.argv[1]\n"
        "(data, kwargs, kind), = get_reader(path)(path)\n"
        "level0 = data[0] if isinstance(data, list) else data\n"
        "print(kind, np.asarray(level0).sum())\n"
        f"{_NO_TORCH}\n",
        path,
    )
    expected = int(mio.open_image(path).array[...].astype(np.int64).sum())
    assert out.split() == ["image", str(expected)]


def test_napari_writer_writes_without_torch(tmp_path):
    out = str(tmp_path / "saved.zarr")
    _child(
        "import sys, numpy as np\n"
        "from napari_mirnet.napari_io import write_ome_zarr\n"
        "data = np.arange(32 * 40, dtype=np.uint16).reshape(32, 40)\n"
        "write_ome_zarr(sys.argv[1], data, {'name': 'saved', 'scale': (0.5, 0.5)})\n"
        f"{_NO_TORCH}\n",
        out,
    )
    src = mio.open_image(out)
    np.testing.assert_array_equal(np.asarray(src.array[...]), np.arange(32 * 40, dtype=np.uint16).reshape(32, 40))
    assert src.meta.scale == {"Y": 0.5, "X": 0.5}


def test_restore_imports_torch_when_it_runs(tiny_weights, tmp_path):
    path = _store(tmp_path)
    out = _child(
        "import sys, numpy as np, napari_mirnet as nm\n"
        "from napari_mirnet.napari_io import get_reader\n"
        "get_reader(sys.argv[1])(sys.argv[1])\n"
        f"{_NO_TORCH}\n"
        "img = np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8)\n"
        "res = nm.restore(img, weights=sys.argv[2], tile=32, halo=8, blend=4, device='cpu')\n"
        "assert 'torch' in sys.modules\n"
        "print(res.shape, res.dtype)\n",
        path,
        tiny_weights,
    )
    assert out.strip() == "(40, 48, 3) uint8"
