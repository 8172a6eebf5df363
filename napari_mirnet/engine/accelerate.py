"""Fast forward paths: bf16 weights, channels_last, cudnn.benchmark, torch.compile, CUDA graphs, overlapped copies.

On CPU "auto" means channels_last where torch convolves with oneDNN (x86 builds): the same fp32
arithmetic in the layout oneDNN works in natively, 1.5-2x faster for every model size measured
(docs/engine.md, "CPU speed and memory"). "off" hands back the model object itself.

``spec`` (``RestoreOptions.accelerate``, or ``$NAPARI_MIRNET_ACCELERATE`` when the option is
"auto") is one of

* ``"off"``: the model as loaded (today's eager forward);
* ``"auto"``: on CPU :data:`CPU_AUTO` where oneDNN is available, else off; on CUDA the fastest
  of a few eager variants, measured on the run's
  first batch and kept only when it is at least :data:`MIN_GAIN` faster than eager (compile is
  part of "auto" only with ``$NAPARI_MIRNET_COMPILE=1``: it costs minutes once per tile shape),
  always with overlapped copies;
* ``"on"``: bf16 weights (when the precision is bf16), channels_last, cudnn.benchmark,
  torch.compile and overlapped copies;
* switch names joined by ``,`` or ``+``: any of :data:`SWITCHES`.

``overlap`` changes no arithmetic: batches go to the GPU from pinned memory without blocking and
come back after the device lock is released (:func:`.forward.run_batch`), so one engine thread
queues its batch while another's finishes. Switches that mean nothing on the device (cudnn,
CUDA graphs and overlap off CUDA) are dropped.

``torch._dynamo`` is imported only when compile is requested: importing it in the GUI process
crashed napari with the CUDA build of torch (docs/NOTES.md, issue 15).
"""

from __future__ import annotations

import copy
import os
import threading
import time
import warnings
from dataclasses import asdict, dataclass, replace

import torch

__all__ = [
    "ENV",
    "MIN_GAIN",
    "SWITCHES",
    "Accelerated",
    "Switches",
    "accelerated",
    "chosen",
    "describe",
    "measure",
    "overlaps",
    "parse",
]

ENV = "NAPARI_MIRNET_ACCELERATE"
#: a variant replaces eager only when it takes at most this fraction of eager's time
MIN_GAIN = 0.95
#: distinct input shapes compiled per model; other shapes (the out-of-memory split, rotated TTA
#: views of a non-square tile) run eagerly rather than paying another compile
MAX_COMPILED_SHAPES = 2
SWITCHES = ("bf16_weights", "channels_last", "cudnn_benchmark", "compile", "cudagraphs", "overlap")


@dataclass(frozen=True)
class Switches:
    """Which optimisations a forward uses. ``compile_mode`` is torch.compile's ``mode``."""

    bf16_weights: bool = False
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False
    cudagraphs: bool = False
    overlap: bool = False
    compile_mode: str = "default"

    @property
    def any(self) -> bool:
        return any(getattr(self, k) for k in SWITCHES)

    def label(self) -> str:
        on = [k for k in SWITCHES if getattr(self, k)]
        return "+".join(on) if on else "eager"

    def to_dict(self) -> dict:
        return asdict(self)


OFF = Switches()
#: what "auto" runs on a CPU with oneDNN; measured there without a per-run timing, which would cost
#: several forward passes of a tile
CPU_AUTO = Switches(channels_last=True)


def cpu_auto() -> Switches:
    """The CPU's "auto": channels_last where oneDNN convolves (its native layout), else eager."""
    return CPU_AUTO if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else OFF


def parse(spec: str | None, device, precision: str) -> Switches | None:
    """The switches ``spec`` names on ``device``; None means "measure" (auto on CUDA).

    Raises ValueError for an unknown name, saying which names exist.
    """
    device = torch.device(device)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if spec == "off":
        return OFF
    cuda = device.type == "cuda"
    if spec == "auto":
        if cuda:
            return None  # measured on the run's first batch
        return cpu_auto() if device.type == "cpu" else OFF
    if spec == "on":
        names = ["bf16_weights", "channels_last", "cudnn_benchmark", "compile", "overlap"]
    else:
        names = [n.strip() for n in spec.replace("+", ",").split(",") if n.strip()]
        bad = [n for n in names if n not in SWITCHES]
        if bad:
            raise ValueError(
                f"accelerate={spec!r}: unknown switch {', '.join(map(repr, bad))}; use 'auto', 'off', 'on' "
                f"or switches joined by ',' from {', '.join(SWITCHES)}"
            )
    flags = dict.fromkeys(names, True)
    # bf16 weights only where bf16 was asked for: under fp32 they would change the requested precision
    flags["bf16_weights"] = flags.get("bf16_weights", False) and precision == "bf16"
    # cudnn, CUDA graphs and overlapped copies mean nothing off CUDA
    for name in ("cudnn_benchmark", "cudagraphs", "overlap"):
        flags[name] = flags.get(name, False) and cuda
    if flags["cudagraphs"]:
        flags["compile"] = True  # CUDA graphs come from torch.compile's "reduce-overhead" mode
    mode = os.environ.get("NAPARI_MIRNET_COMPILE_MODE") or ("reduce-overhead" if flags["cudagraphs"] else "default")
    return Switches(**flags, compile_mode=mode)


def overlaps(spec: str | None, device) -> bool:
    """Whether a run with ``spec`` on ``device`` overlaps host copies with the GPU's work."""
    if torch.device(device).type != "cuda":
        return False
    sw = parse(spec, device, "fp32")
    return sw is None or sw.overlap  # None: auto on CUDA, which always overlaps


class Accelerated:
    """A model behind a chosen set of switches; called like the model, returns float32.

    Quacks like the model where the engine needs it (``parameters``, ``config``,
    ``weights_sha256``). When compiling raises (no compiler, an unsupported operator), the
    forward falls back to the eager variant for good and says so once in a warning;
    ``fallback`` then holds the reason.
    """

    def __init__(self, model, device, precision: str, switches: Switches):
        self.switches = switches
        self.precision = precision
        self.fallback: str | None = None
        self._source = model
        m = model
        if switches.bf16_weights or switches.channels_last:
            # the loaded model is shared (weights.cached_model): never change it; its cache of
            # accelerated forwards stays behind
            cache = model.__dict__.get(_ATTR)
            m = copy.deepcopy(model, {} if cache is None else {id(cache): {}})
        if switches.bf16_weights:
            m = m.to(torch.bfloat16)
        if switches.channels_last:
            m = m.to(memory_format=torch.channels_last)
        self.eager = m.eval()
        self._compiled = None
        self._shapes: list[tuple] = []  # compiled shapes, the first one's batch is the padded batch
        self._lock = threading.Lock()
        if switches.cudnn_benchmark:
            # the tile shapes of a run are few and fixed: let cuDNN time its algorithms once per shape
            torch.backends.cudnn.benchmark = True
        if switches.compile:
            self._compile()

    # the engine reads these from whatever it was given as the model
    def parameters(self, *a, **k):
        return self.eager.parameters(*a, **k)

    def __getattr__(self, name):
        if name.startswith("_") or name in ("eager",):
            raise AttributeError(name)
        return getattr(self._source, name)

    def _compile(self) -> None:
        try:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _inductor_cache())
            import torch._dynamo  # noqa: F401  (lazily: see the module docstring)

            # inductor's on-disk FX graph and autotune caches make a second process skip the work
            import torch._inductor.config as icfg

            icfg.fx_graph_cache = True
            self._compiled = torch.compile(self.eager, mode=self.switches.compile_mode, dynamic=False)
        except Exception as exc:  # noqa: BLE001 - any failure to compile means: run eagerly
            self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        self._compiled = None
        self.fallback = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        warnings.warn(
            f"torch.compile is not available here ({self.fallback}); running the model eagerly",
            RuntimeWarning,
            stacklevel=3,
        )

    def _target(self, x: torch.Tensor):
        """The compiled forward and the batch to pad ``x`` to, or (None, 0) for the eager one."""
        if self._compiled is None:
            return None, 0
        with self._lock:
            for shape in self._shapes:
                if shape[1:] == tuple(x.shape[1:]) and x.shape[0] <= shape[0]:
                    return self._compiled, shape[0]
            if len(self._shapes) < MAX_COMPILED_SHAPES:
                self._shapes.append(tuple(x.shape))
                return self._compiled, x.shape[0]
        return None, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.switches.bf16_weights:
            x = x.to(torch.bfloat16)
        if self.switches.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fn, batch = self._target(x)
        n = x.shape[0]
        if fn is not None:
            if batch > n:  # the last, short batch of a run reuses the full batch's compiled graph
                x = torch.cat([x, x.new_zeros((batch - n, *x.shape[1:]))])
            try:
                y = fn(x)
                if self.switches.cudagraphs:
                    y = y.clone()  # CUDA graph outputs are overwritten by the next replay
                return y[:n].float().contiguous()
            except torch.cuda.OutOfMemoryError:
                raise  # forward_with_retry splits the batch; smaller shapes then run eagerly
            except Exception as exc:  # noqa: BLE001
                self._give_up(exc)
                x = x[:n]
        return self.eager(x).float().contiguous()


def _inductor_cache() -> str:
    from ..weights import cache_dir

    return str(cache_dir() / "torchinductor")


def _time(fn, x, repeats: int) -> float:
    sync = (lambda: torch.cuda.synchronize(x.device)) if x.is_cuda else (lambda: None)
    with torch.inference_mode():
        fn(x)  # warm-up: cudnn.benchmark trials, compile
        sync()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            sync()
            best = min(best, time.perf_counter() - t0)
    return best


def _eager(model, precision: str):
    def run(x):
        if precision == "bf16":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return model(x).float()
        return model(x).float()

    return run


def measure(model, x: torch.Tensor, precision: str, candidates=None, repeats: int = 3):
    """Time the eager forward and each candidate on ``x``; returns (best Switches, {label: s}).

    A candidate is kept only when it takes at most :data:`MIN_GAIN` of the eager time.
    """
    if candidates is None:
        bf = precision == "bf16"
        candidates = [
            Switches(bf16_weights=bf, cudnn_benchmark=x.is_cuda),
            Switches(bf16_weights=bf, cudnn_benchmark=x.is_cuda, channels_last=True),
        ]
        if os.environ.get("NAPARI_MIRNET_COMPILE") == "1":
            candidates.append(Switches(bf16_weights=bf, cudnn_benchmark=x.is_cuda, compile=True))
    times = {"eager": _time(_eager(model, precision), x, repeats)}
    best, best_t = OFF, times["eager"]
    # cudnn.benchmark is process-wide: leave it as it was unless the chosen variant wants it
    was = torch.backends.cudnn.benchmark
    for sw in candidates:
        acc = Accelerated(model, x.device, precision, sw)
        times[sw.label()] = t = _time(acc, x, repeats)
        torch.backends.cudnn.benchmark = was
        if acc.fallback is None and t <= MIN_GAIN * times["eager"] and t < best_t:
            best, best_t = sw, t
    if best.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    return best, times


# one accelerated forward per (model, precision, spec), kept on the model itself: a run's batches
# share the compiled graphs, and it goes when the model goes (a module-level dict would keep every
# model ever loaded alive)
_ATTR = "_napari_mirnet_accelerated"
_CACHE_LOCK = threading.Lock()


def _cache_of(model) -> dict:
    return model.__dict__.setdefault(_ATTR, {})


def chosen(model) -> dict:
    """{(precision, spec, env, onednn): description} of the forwards built for ``model`` so far."""
    return {k: describe(v) for k, v in dict(model.__dict__.get(_ATTR, {})).items()}


def accelerated(model, precision: str, spec: str | None = "auto", sample: torch.Tensor | None = None):
    """The forward for ``model`` (already on its device) under ``spec``: the model itself when off.

    ``sample`` (a batch like the run's, on any device) is what "auto" measures on CUDA, on its
    first tile (a few forward passes of one tile); without one, auto keeps the eager forward
    (with overlapped copies): nothing that changes the arithmetic is switched on unmeasured.
    """
    key = (precision, spec or "auto", os.environ.get(ENV), torch.backends.mkldnn.enabled)
    cache = _cache_of(model)
    if key in cache:
        return cache[key]
    # one thread builds (and measures) while the others of a threaded run wait for its choice
    with _CACHE_LOCK:
        if key in cache:
            return cache[key]
        device = next(model.parameters()).device
        sw = parse(spec, device, precision)
        if sw is None:  # auto on CUDA: the fastest measured forward, copies always overlapped
            best = measure(model, sample[:1].to(device), precision, repeats=2)[0] if sample is not None else OFF
            sw = replace(best, overlap=True)
        acc = model if not sw.any else Accelerated(model, device, precision, sw)
        cache[key] = acc
    return acc


def describe(acc) -> str:
    """One line saying which forward runs: for logs and benchmark reports."""
    if not isinstance(acc, Accelerated):
        return "eager"
    text = acc.switches.label()
    if acc.switches.compile:
        text += f" (mode {acc.switches.compile_mode})"
    if acc.fallback:
        text += f", compile fell back to eager: {acc.fallback}"
    return text
