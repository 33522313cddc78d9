"""The small exception family of bluefog.

Validation errors use the built-in ``ValueError`` / ``TypeError`` (as Bluefog 0.3.0 did), so user code
that catches those keeps working.  Failures of the runtime itself derive from :class:`BluefogError`.
"""


class BluefogError(RuntimeError):
    """Base class of errors raised by the bluefog runtime (not by argument validation)."""


class ShutdownError(BluefogError):
    """The runtime was shut down (or a peer failed) while an operation was pending."""


class PeerFailureError(BluefogError):
    """A peer rank died or stopped answering."""


NOT_INITIALIZED = "Bluefog has not been initialized; use bf.init()."
SHUT_DOWN = ("Bluefog has been shut down. This was caused by an exception on one of the ranks or an "
             "attempt to run collective operation after one of the ranks finished execution; "
             "call bf.init() again only in a new process.")


class ArgumentAssertionError(ValueError, AssertionError):
    """Bad argument where Bluefog 0.3.0 raised ``AssertionError``: catchable as either type."""
