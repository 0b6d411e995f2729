"""dmfn.serving: the Triton model repository and the ``dmfn serve`` service.

No torch here: :mod:`.config` renders every ``config.pbtxt`` from :class:`dmfn.contract.schema.Schema`,
:mod:`.repository` writes a complete repository, :mod:`.triton` starts a real tritonserver,
:mod:`.service` runs it behind the front door and :mod:`.supervisor` heals it; :mod:`.cli` is
the ``dmfn serve`` command. The ONNX/TensorRT export lives in :mod:`dmfn.training.export` (it
needs torch).
"""

from dmfn.contract.server import ServerContract

from .config import TARGETS, ServingSettings, render_all
from .repository import ModelInfo, check_repository, template_dir, write_repository
from .triton import PortInUseError, TritonError, TritonServer, free_ports

__all__ = [
    "TARGETS",
    "ModelInfo",
    "PortInUseError",
    "ServerContract",
    "ServingSettings",
    "TritonError",
    "TritonServer",
    "check_repository",
    "free_ports",
    "render_all",
    "template_dir",
    "write_repository",
]
