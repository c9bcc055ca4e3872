"""The layer rule of the package (pyproject's import-linter contract): ops -> models -> (data, sample)
-> (train, eval, convert) -> app -> cli, each importing only downward; nothing imports the CLI."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lint_imports_keeps_the_layer_contract():
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    proc = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_tools_and_configs_do_not_import_the_cli_or_tests():
    offenders = []
    for folder in ("tools", "configs", "lip_jax"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py") and not (folder == "lip_jax" and name == "cli.py"):
                    text = open(os.path.join(dirpath, name)).read()
                    if "lip_jax.cli" in text.replace("lip_jax.cli:main", "") or "from tests" in text:
                        offenders.append(os.path.join(dirpath, name))
    assert not offenders, offenders
