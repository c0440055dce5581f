"""The README says what is true: its QueueScaler reference is the CRD's, its commands exist."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

import pytest

from queuescaler_testkit.env import REPO

pytestmark = pytest.mark.unit

README = (REPO / "README.md").read_text()
MAKEFILE = (REPO / "Makefile").read_text()


def crd_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "crd_reference", REPO / "hack" / "crd_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z][\w-]*):", MAKEFILE, re.MULTILINE))


def section(title: str) -> str:
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.DOTALL | re.MULTILINE)
    assert found, f"the README has no '## {title}' section"
    return found.group(1)


def test_the_queuescaler_reference_is_generated_from_the_crd() -> None:
    generator = crd_reference()
    present = generator.current_section(README)
    assert present is not None, "README.md lost the generated reference's markers"
    assert present == generator.reference(), (
        "the README's QueueScaler reference is out of date: python hack/crd_reference.py --write"
    )


@pytest.mark.parametrize(
    "field",
    [
        pytest.param("spec.maxReplicas", id="required-bound"),
        pytest.param("spec.source.rabbitmq.connectionSecretRef.name", id="secret-name"),
        pytest.param("spec.behavior.scaleDown.stabilizationSeconds", id="nested-behavior"),
        pytest.param("status.conditions", id="status-conditions"),
    ],
)
def test_the_reference_documents_fields_users_look_for(field: str) -> None:
    assert f"| `{field}`" in crd_reference().reference()


def test_the_two_commands_are_make_targets() -> None:
    commands = re.findall(r"^make ([\w-]+)", section("Two commands"), re.MULTILINE)
    assert commands == ["demo", "test"]
    assert set(commands) <= make_targets()


def test_every_make_command_the_readme_mentions_exists() -> None:
    mentioned = set(re.findall(r"`make ([\w-]+)", README))
    assert mentioned, "the README mentions no make command"
    assert mentioned <= make_targets(), mentioned - make_targets()


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(m, id=m)
        for m in sorted(set(re.findall(r"`((?:hack|examples|charts|crds)/[\w./-]+)`", README)))
    ],
)
def test_every_repository_path_the_readme_names_exists(path: str) -> None:
    assert (REPO / path).exists(), path
