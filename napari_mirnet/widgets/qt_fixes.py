"""Every Qt and superqt workaround of the widgets, each with the reason it is needed.

Narrow combo boxes and wrapping labels keep a dock from widening and squeezing the canvas; a
spin box shows 'auto' at its minimum (superqt's spin box ignores Qt's special-value text, so this
adapts superqt's private text handling: the one place that uses superqt's private API); the
plugin's docks share one tab group so that six docks fit the window.
"""

from __future__ import annotations

import re

from magicgui.widgets import ComboBox, Container, Label, SpinBox
from qtpy.QtCore import QObject

__all__ = ["auto_at_minimum", "box", "breakable", "compact_combo", "share_dock_area", "wrapping"]


#: combo boxes show about this many characters, so that long layer or weights names do not widen the
#: dock and squeeze the canvas; their pop-up lists still show every entry whole
_COMBO_CHARS = 14


def compact_combo(combo: ComboBox, show_text_as_tooltip: bool = True) -> None:
    """Let a combo box be narrower than its longest entry (the current text goes in the tooltip)."""
    from qtpy.QtWidgets import QComboBox

    native = combo.native
    native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    native.setMinimumContentsLength(_COMBO_CHARS)
    view = native.view()

    def fit_popup(*_):
        view.setMinimumWidth(view.sizeHintForColumn(0) + 24)

    native.model().rowsInserted.connect(fit_popup)
    fit_popup()
    if show_text_as_tooltip:
        native.currentTextChanged.connect(native.setToolTip)
        native.setToolTip(native.currentText())


def auto_at_minimum(spin: SpinBox) -> None:
    """Show (and accept) 'auto' for a spin box's minimum. magicgui's spin box is superqt's
    QLargeIntSpinBox, which ignores Qt's special-value text; this adapts its text handling."""
    from qtpy.QtGui import QValidator

    native = spin.native
    try:
        from superqt.spinbox._intspin import _EmitPolicy
    except ImportError:
        return  # a superqt that works differently: plain numbers then
    if not all(hasattr(native, a) for a in ("_setValue", "_interpret", "_editor_text_changed")):
        return
    edit = native.lineEdit()

    def value_of(text: str) -> int:
        return native.minimum() if text.strip().lower() in ("auto", "") else int(text)

    def show():
        text = "auto" if native.value() == native.minimum() else str(native.value())
        if edit.text() != text:
            edit.setText(text)

    def interpret(policy):
        try:
            native._setValue(value_of(edit.displayText()), policy)
        except ValueError:
            show()

    def on_text(text: str) -> None:  # while typing: numbers only, half-typed text waits
        if text.strip().lstrip("-").isdigit():
            native._setValue(int(text), _EmitPolicy.EmitIfChanged)

    class Validator(QValidator):
        def validate(self, text, pos):
            ok = "auto".startswith(text.strip().lower()) or text.lstrip("-").isdigit() or text in ("", "-")
            return (QValidator.State.Acceptable if ok else QValidator.State.Invalid), text, pos

    edit.textChanged.disconnect(native._editor_text_changed)
    edit.textChanged.connect(on_text)
    edit.setValidator(Validator(native))
    native._interpret = interpret
    native._updateEdit = show
    native.valueChanged.connect(lambda *_: show())
    show()


def box(widgets: list, margins=(0, 0, 0, 0), **kwargs) -> Container:
    """A nested container without margins of its own (they would add to the dock's width)."""
    box = Container(widgets=widgets, **kwargs)
    box.margins = margins
    return box


def wrapping(label: Label) -> Label:
    """A label whose long text wraps and grows in height instead of widening the dock."""
    from qtpy.QtWidgets import QSizePolicy

    native = label.native
    native.setWordWrap(True)
    policy = QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
    policy.setHeightForWidth(True)
    native.setSizePolicy(policy)
    return label


def breakable(text: str) -> str:
    """Text with break opportunities after path separators: Qt wraps only at spaces, so a long path
    would otherwise run off the edge of a narrow dock."""
    return re.sub(r"([/\\])", "\\1\u200b", text)


#: napari titles a plugin's docks "<widget name> (<plugin name>)".
_OUR_DOCKS = "(napari-mirnet)"


def share_dock_area(widget) -> None:
    """Put the dock holding ``widget`` in a tab beside this plugin's other docks in its area (and
    do the same for the plugin's docks opened later in that window).

    Stacked one above the other, six docks made the window taller than the screen and squeezed the
    canvas to a strip; as tabs they share one dock's height. A dock the user drags elsewhere stays there.
    """
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    main = dock.parentWidget() if dock is not None else None
    if not isinstance(main, QMainWindow):
        return  # not docked (a test, a script): nothing to share
    if main.findChild(_DockWatcher, "napari_mirnet_docks") is None:
        main.installEventFilter(_DockWatcher(main))
        # docks of ours added before the watcher (in the same event loop turn) join now
        for other in main.findChildren(QDockWidget):
            if other is not dock:
                _tabify_with_ours(main, other)
    _tabify_with_ours(main, dock)


def _tabify_with_ours(main, dock) -> None:
    try:
        _tabify(main, dock)
    except RuntimeError:  # the window or the dock is gone (closed in the meantime)
        pass


def _tabify(main, dock) -> None:
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QDockWidget

    ours = [
        d
        for d in main.findChildren(QDockWidget)
        # hidden ones too: napari shows a dock after adding it, and a closed one may be opened again
        if d.windowTitle().endswith(_OUR_DOCKS) and not d.isFloating()
    ]
    if dock not in ours or any(d in main.tabifiedDockWidgets(dock) for d in ours):
        return  # not ours, or already in a tab group with ours
    area = main.dockWidgetArea(dock)
    others = sorted((d for d in ours if d is not dock and main.dockWidgetArea(d) == area), key=lambda d: d.isHidden())
    if others:
        main.tabifyDockWidget(others[0], dock)
        dock.show()
        dock.raise_()  # the one just opened is the one shown
        QTimer.singleShot(0, lambda: _fit_screen(main))


def _fit_screen(main) -> None:
    """Give back the height the window grew by while the new dock sat below the others (Qt grows
    a window to its docks' minimum, and never shrinks it again): no taller than its screen."""
    try:
        screen = main.screen().availableGeometry()
        frame = main.frameGeometry().height() - main.height()
        if main.height() + frame > screen.height() and not main.isMaximized():
            main.resize(main.width(), max(main.minimumSizeHint().height(), screen.height() - frame))
    except RuntimeError:  # closed in the meantime
        pass


class _DockWatcher(QObject):
    """On a main window: a plugin dock added later (our fine-tune widget, say) joins the tabs too."""

    def __init__(self, main):
        super().__init__(main)
        self.setObjectName("napari_mirnet_docks")

    def eventFilter(self, obj, event):
        from qtpy.QtCore import QEvent, QTimer
        from qtpy.QtWidgets import QDockWidget

        if event.type() == QEvent.Type.ChildAdded and isinstance(event.child(), QDockWidget):
            dock = event.child()
            # napari resizes the docks after adding one: look once it is in place
            QTimer.singleShot(0, lambda: _tabify_with_ours(obj, dock))
        return False
