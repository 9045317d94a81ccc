"""The live demo (`cnnkit demo`): train in a background thread and watch it in the browser,
as the ConvNetJS CIFAR-10 demo the notes point to, offline and for any net.

``DemoSession`` (NumPy only) runs a cnnkit Trainer and keeps the curves and pictures;
``cnnkit.demo.app`` (needs ``pip install 'cnnkit[demo]'``: starlette, uvicorn) serves it:
``create_app(session)`` is the ASGI app, ``DemoServer(session, host, port).run()`` serves it.
"""

from .check import ModelCheckError, check_model
from .session import DemoError, DemoSession

__all__ = ["DemoError", "DemoSession", "ModelCheckError", "check_model"]
