"""The back end: lowers validated architectures to torch.nn modules (``hyctas_dsl.compiler``).

Public API (DESIGN.md "Supernet and weight sharing"; docs/compiler.md):

- ``Supernet(space, classes=19)``; ``supernet.subnet(arch) -> SubnetView``
- ``export(arch, supernet=None, classes=None) -> nn.Module`` (standalone)
- ``write_python(arch, path, supernet=None, model=None, classes=None)`` (``model.py`` + weights)
- ``save_supernet / load_supernet``, ``save_model / load_model`` (safetensors, never pickle)
- ``artifacts.write_artifact / run_artifact``: ONNX, TorchScript, safetensors, ``model.py``
  written atomically and run back as a deployment would (``hyctas compile --export``, ``export``)
- ``set_drop_path(model, p)``, ``lower(arch)`` (the module plan over the DAG)
"""

from hyctas_dsl.compiler.build import export, network_source
from hyctas_dsl.compiler.lower import Plan, lower
from hyctas_dsl.compiler.ops import set_drop_path
from hyctas_dsl.compiler.supernet import SubnetView, Supernet, check_fit, check_structure

__all__ = [
    "Supernet",
    "SubnetView",
    "check_fit",
    "check_structure",
    "export",
    "lower",
    "Plan",
    "network_source",
    "set_drop_path",
]
