"""The one exception tree of Gauntlet.

Every error a user can cause derives from :class:`GauntletError`; its message is one
line that says what is wrong and what to do about it.  The CLI prints that line (never a
traceback) and exits with code 2.

::

    GauntletError
    ├── ConfigError            bad hyperparameter, unknown name, broken spec
    │   ├── ThreatModelError   bad norm / ε / targeting
    │   └── UnknownNameError   a registry name that does not exist
    ├── CapabilityError        attack needs gradients/scores the model does not offer
    ├── DataError              bad x / y: shape, dtype, NaN/inf, range, labels
    ├── ModelLoadError         missing, corrupt or unsupported model file
    │   ├── UntrustedFileError a pickle refused without trust=True / --trust
    │   └── RemoteError        a remote model endpoint is unreachable, times out or answers wrongly
    ├── BudgetExceeded         a query budget was used up
    ├── StoreError             the results store cannot be opened, read or written
    └── ExecutorError          an audit unit failed on every try, or the executor cannot start
"""

from __future__ import annotations

__all__ = [  # sorted; the tree above gives the hierarchy
    "BudgetExceeded",
    "CapabilityError",
    "ConfigError",
    "DataError",
    "ExecutorError",
    "GauntletError",
    "ModelLoadError",
    "RemoteError",
    "StoreError",
    "ThreatModelError",
    "UnknownNameError",
    "UntrustedFileError",
    "first_line",
]


class GauntletError(Exception):
    """Base class of every error Gauntlet raises on purpose."""


class ConfigError(GauntletError, ValueError):
    """A hyperparameter, option or configuration value is invalid."""


class ThreatModelError(ConfigError):
    """The threat model (norm, ε, targeting, budget) is invalid."""


class UnknownNameError(ConfigError, LookupError):
    """A registry name (attack, defense, dataset) does not exist."""


class CapabilityError(GauntletError, TypeError):
    """The model lacks a capability (gradients, scores) that the attack needs."""


class DataError(GauntletError, ValueError):
    """Inputs or labels are malformed: shape, dtype, non-finite values, range, labels."""


class ModelLoadError(GauntletError, OSError):
    """A model file is missing, corrupt, or of an unsupported format."""


class UntrustedFileError(ModelLoadError):
    """Loading this file would unpickle arbitrary code; pass trust=True only for files you trust."""


class RemoteError(ModelLoadError):
    """A remote model (HTTP endpoint) is unreachable, times out, refuses the request or answers
    something that is not the documented wire format."""


class BudgetExceeded(GauntletError, RuntimeError):
    """A query budget was exhausted."""


class StoreError(GauntletError, OSError):
    """The results store cannot be opened, read or written (bad URL, missing driver, unreachable server)."""


class ExecutorError(GauntletError, RuntimeError):
    """An audit executor cannot start (Ray missing, cluster unreachable) or a unit kept failing;
    the units that finished are kept in the store."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), at most 200 characters:
    how a third-party failure is quoted inside a one-line Gauntlet error."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."
