"""Errors jattn raises when a backend is asked for something it cannot do."""

from __future__ import annotations


class NotSupportedError(NotImplementedError):
  """A backend was asked for a feature it cannot honour.

  Raised instead of silently dropping the feature. ``backend`` and ``feature``
  name what was refused, so callers (and the auto-selector) can fall back.
  """

  def __init__(self, backend: str, feature: str, detail: str = ""):
    self.backend = backend
    self.feature = feature
    self.detail = detail
    msg = f"backend {backend!r} does not support {feature}"
    if detail:
      msg += f": {detail}"
    super().__init__(msg)


class NoBackendError(NotSupportedError):
  """No registered backend can run this call on this platform."""

  def __init__(self, reasons: dict[str, str]):
    self.reasons = dict(reasons)
    lines = "\n".join(f"  {k}: {v}" for k, v in reasons.items())
    NotImplementedError.__init__(
        self, "no registered attention backend can run this call:\n" + lines)
    self.backend = "auto"
    self.feature = "this combination of arguments"
    self.detail = lines
