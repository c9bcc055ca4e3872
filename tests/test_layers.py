"""The layer rule of the package (pyproject's import-linter contracts): ops -> models -> (data, sample)
-> (train, eval, convert) -> app -> commands -> cli, each importing only downward, and no command
imports another; nothing imports the CLI."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lint_imports_keeps_the_layer_contract():
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    proc = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_tools_and_configs_do_not_import_the_cli_or_tests():
    # Running the CLI as a program (`python -m lip_jax.cli`) is fine; importing it is not.
    pattern = re.compile(r"^\s*(from lip_jax\.cli import|import lip_jax\.cli|from lip_jax import cli\b|"
                         r"from tests\b|import tests\b|from test_\w+ import|import test_\w+|"
                         r"from (torch_\w+|random_weights) import|import (torch_\w+|random_weights)\b)", re.M)
    offenders = []
    for folder in ("tools", "configs", "lip_jax"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    if pattern.search(open(path).read()):
                        offenders.append(path)
    assert not offenders, offenders


def test_help_and_argument_errors_load_no_jax():
    """The command modules import JAX (and flax, orbax, torch, gradio) only inside `run`: `lip-jax
    --help` and a wrong argument answer at once."""
    code = ("import sys\nfrom lip_jax.cli import main\n"
            "for argv in (['--help'], ['convert', '--help'], ['inpaint'], ['eval', '--data'], ['serve', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('jax', 'flax', 'orbax', 'torch', 'gradio') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
