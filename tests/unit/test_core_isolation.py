"""The pure core imports no ray, vllm or torch (DESIGN.md section 2)."""

import subprocess
import sys

from tests.conftest import REPO

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('ray', 'vllm', 'torch'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import pkgutil, importlib, orchestrator.core as core
for m in pkgutil.iter_modules(core.__path__):
    importlib.import_module('orchestrator.core.' + m.name)
from orchestrator.core.grading import math_equal, leap_compat_correct
from orchestrator.core.routing import select_peers
assert math_equal('so the answer is \\\\boxed{5}', '5') and leap_compat_correct('\\\\boxed{025}', '25')
assert select_peers(['a', 'ab', 'xyz'], 'dispersed', 1) == [[2], [2], [0]]
print('core ok', sorted(k for k in sys.modules if k.split('.')[0] in ('ray', 'vllm', 'torch')))
"""


def test_core_imports_and_works_without_ray_vllm_torch():
    proc = subprocess.run([sys.executable, "-c", BLOCKER], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "core ok []" in proc.stdout
