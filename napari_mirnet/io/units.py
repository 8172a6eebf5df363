"""Units of length and time: OME-XML symbols, OME-NGFF (UDUNITS-2) names, ImageJ and everyday spellings.

OME-TIFF names a unit by its symbol (``µm``, ``pc``, ``ks``), OME-NGFF by its name (``micrometer``,
``parsec``, ``kilosecond``), ImageJ and people by whatever they type (``micron``, ``um``, ``sec``).
Every unit is carried as its NGFF name; the few OME units that NGFF has no name for (decametre,
thou, line, point, astronomical unit, light year) are converted to one it has.
"""

from __future__ import annotations

__all__ = ["UnitError", "from_ome", "normalise_unit", "ome_symbol", "to_seconds"]

_PREFIXES = (
    ("Y", "yotta", 1e24),
    ("Z", "zetta", 1e21),
    ("E", "exa", 1e18),
    ("P", "peta", 1e15),
    ("T", "tera", 1e12),
    ("G", "giga", 1e9),
    ("M", "mega", 1e6),
    ("k", "kilo", 1e3),
    ("h", "hecto", 1e2),
    ("da", "deca", 1e1),
    ("", "", 1.0),
    ("d", "deci", 1e-1),
    ("c", "centi", 1e-2),
    ("m", "milli", 1e-3),
    ("µ", "micro", 1e-6),
    ("n", "nano", 1e-9),
    ("p", "pico", 1e-12),
    ("f", "femto", 1e-15),
    ("a", "atto", 1e-18),
    ("z", "zepto", 1e-21),
    ("y", "yocto", 1e-24),
)

# NGFF name -> (OME symbol, size in metres or seconds)
LENGTH = {f"{name}meter": (f"{sym}m", f) for sym, name, f in _PREFIXES if name != "deca"}
LENGTH.update(
    {
        "angstrom": ("Å", 1e-10),
        "inch": ("in", 0.0254),
        "foot": ("ft", 0.3048),
        "yard": ("yd", 0.9144),
        "mile": ("mi", 1609.344),
        "parsec": ("pc", 3.0856775814913673e16),
    }
)
TIME = {f"{name}second": (f"{sym}s", f) for sym, name, f in _PREFIXES}
TIME.update({"minute": ("min", 60.0), "hour": ("h", 3600.0), "day": ("d", 86400.0)})

# OME symbols NGFF has no name for: (NGFF name, how many of it one is)
_CONVERTED = {
    "dam": ("meter", 10.0),
    "thou": ("inch", 1e-3),
    "li": ("inch", 1 / 12),
    "pt": ("inch", 1 / 72),
    "ua": ("meter", 1.495978707e11),
    "ly": ("meter", 9.4607304725808e15),
}
# what says "no physical unit": the size is in pixels
NO_UNIT = frozenset({"pixel", "pixels", "px", "reference frame", "dimensionless", ""})

# what ImageJ and people write for the same units
_ALIASES = {
    "micron": "micrometer",
    "microns": "micrometer",
    "um": "micrometer",
    "μm": "micrometer",  # Greek mu, not the micro sign
    "\\u00b5m": "micrometer",  # ImageJ escapes the micro sign in its ASCII description
    "μs": "microsecond",
    "\\u00b5s": "microsecond",
    "us": "microsecond",
    "a": "angstrom",  # ImageJ's ASCII angstrom
    "sec": "second",
    "seconds": "second",
    "msec": "millisecond",
    "mins": "minute",
    "minutes": "minute",
    "hours": "hour",
    "hr": "hour",
    "days": "day",
}
_BY_SYMBOL = {sym: name for table in (LENGTH, TIME) for name, (sym, _) in table.items()}


class UnitError(ValueError):
    """A unit that no table here knows."""


def normalise_unit(text) -> str | None:
    """The OME-NGFF name of a unit as OME, NGFF, ImageJ or people write it; None if unknown or 'pixel'."""
    if text is None:
        return None
    t = str(text).strip()
    if t in _BY_SYMBOL:  # symbols are case-sensitive: 'Ms' is megasecond, 'ms' millisecond
        return _BY_SYMBOL[t]
    low = t.lower().replace("metre", "meter")
    if low in LENGTH or low in TIME:
        return low
    if low.endswith("s") and (low[:-1] in LENGTH or low[:-1] in TIME):
        return low[:-1]
    return _ALIASES.get(low)


def from_ome(value: float, text) -> tuple[float, str | None]:
    """(value, NGFF unit name) of an OME quantity; the unit is None for pixels ('pixel', 'reference frame').

    Raises :class:`UnitError` for a unit none of OME, NGFF, ImageJ knows.
    """
    t = "" if text is None else str(text).strip()
    if t.lower() in NO_UNIT:
        return float(value), None
    if t in _CONVERTED:
        name, factor = _CONVERTED[t]
        return float(value) * factor, name
    name = normalise_unit(t)
    if name is None:
        raise UnitError(f"unknown unit {t!r}")
    return float(value), name


def ome_symbol(unit) -> str | None:
    """The OME-XML symbol of a unit (any spelling :func:`normalise_unit` knows); None if it has none."""
    name = normalise_unit(unit)
    table = LENGTH if name in LENGTH else TIME
    return table[name][0] if name else None


def to_seconds(unit) -> float | None:
    """How many seconds one ``unit`` is (None: not a unit of time)."""
    name = normalise_unit(unit)
    return TIME[name][1] if name in TIME else None


def to_meters(unit) -> float | None:
    """How many metres one ``unit`` is (None: not a unit of length)."""
    name = normalise_unit(unit)
    return LENGTH[name][1] if name in LENGTH else None
