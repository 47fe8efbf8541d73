"""errands' web dashboard: watch and operate the queue from a browser.

Needs the ``dashboard`` extra (``pip install 'errands[dashboard]'``). Mount
:func:`create_app` in an ASGI application, or run ``errands dashboard``
(:func:`serve`). Nothing else in errands imports this package.
"""

from errands.dashboard.app import create_app, serve

__all__ = ["create_app", "serve"]
