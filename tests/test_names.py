"""Pipeline and model names live in one table (runtime/specs.py); other code reads them from it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from cbnet_tl.runtime.specs import CONVERTER, DEPLOYED_PIPELINES, INVOKE_PROBE, PIPELINE_SPECS

ROOT = Path(__file__).resolve().parents[1]
READERS = ["toolchain/arm64/cost.py", "toolchain/training/fallback.py", "toolchain/analysis/sizes.py", "toolchain/analysis/report.py", "toolchain/analysis/bench.py",
           "toolchain/delivery/bundle.py", "toolchain/analysis/evaluation.py", "examples/classify_folder.py", "runtime/cli.py",
           *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "toolchain" / "cli").glob("*.py"))]
NAMES = ({*PIPELINE_SPECS, CONVERTER, INVOKE_PROBE}
         | {model for spec in PIPELINE_SPECS.values() for model in spec.models}
         | {label for spec in PIPELINE_SPECS.values() for label in spec.paths.values()})


def _literals(path: Path) -> list:
    """String constants of a module, docstrings and other bare string statements left out."""
    tree = ast.parse(path.read_text())
    bare = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in bare]


def test_no_pipeline_or_model_name_is_retyped_outside_the_table():
    retyped = [f"{name}:{line}: {value!r}" for name in READERS for line, value in _literals(ROOT / name)
               if value in NAMES]
    assert retyped == []


def test_the_report_template_names_no_pipeline():
    text = (ROOT / "templates" / "report" / "index.html.j2").read_text()
    named = re.findall(r"pipelines\.([a-z_]+)", text) + re.findall(r"""["']([a-z+_-]+)["']""", text)
    assert sorted(set(named) & (NAMES | {"cbnet", "lenet", "branchynet"}) - {"items", "values"}) == []


def test_the_bundles_run_py_lists_every_deployed_pipeline(tiny_bundle):
    """Every pipeline the bundle deploys: the default build's, none of the optional ones it was not built with."""
    from cbnet_tl.runtime.manifest import read_manifest
    from cbnet_tl.runtime.specs import deployed_pipelines

    usage = next(line for line in (tiny_bundle / "run.py").read_text().splitlines() if "classify IMAGE_OR_DIR" in line)
    deployed = deployed_pipelines(read_manifest(tiny_bundle))
    assert set(deployed) == {p for p in DEPLOYED_PIPELINES if not PIPELINE_SPECS[p].optional}
    assert "--pipeline " + "|".join(deployed) + "]" in usage


def test_cli_choices_are_the_recipe_tables():
    from cbnet_tl.recipes.fast import SIZES
    from cbnet_tl.toolchain.cli.common import RecipeChoice, SizeChoice
    from cbnet_tl.toolchain.training.train import Recipe

    assert [s.value for s in SizeChoice] == list(SIZES)
    assert [r.value for r in RecipeChoice] == [r.value for r in Recipe]
