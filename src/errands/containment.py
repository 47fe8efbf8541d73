"""The documented home of ``UserCodeError`` (see the README's Security section).

The rules themselves (user code never stops the worker) live in
``errands.worker.containment``; this module re-exports them under their former path.
"""

from errands.worker.containment import UserCodeError, ask_hook, each_result, is_own_interrupt

__all__ = ["UserCodeError", "ask_hook", "each_result", "is_own_interrupt"]
