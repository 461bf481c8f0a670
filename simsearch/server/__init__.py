"""HTTP service for an index (needs the ``server`` extra: ``pip install 'simsearch[server]'``).

    from simsearch.server import create_app
    app = create_app("indexes/photos")          # a FastAPI app: mount it, or run it with any ASGI server

``simsearch serve INDEX`` runs it with uvicorn. Importing :mod:`simsearch` does not import this package.
"""

from .app import create_app, serve
from .state import ServiceState

__all__ = ["ServiceState", "create_app", "serve"]
