"""The AsyncAPI document passes the official parser (`@asyncapi/parser`, pinned in
dev/asyncapi/package.json and installed by `make install`); a broken copy does not."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / "dev" / "asyncapi"
CONTRACTS = ROOT / "ingestor" / "contracts"


def parse(document: Path) -> subprocess.CompletedProcess[str]:
    """Runs validate.mjs; fails (never skips) when node or the installed parser is missing."""
    node = shutil.which("node")
    assert node, "node is needed for the AsyncAPI parser check"
    pinned = json.loads((CHECKER / "package.json").read_text())["dependencies"]["@asyncapi/parser"]
    installed = CHECKER / "node_modules" / "@asyncapi" / "parser" / "package.json"
    assert installed.is_file(), "the AsyncAPI parser is not installed: run `make install`"
    assert json.loads(installed.read_text())["version"] == pinned, "run `make install`"
    return subprocess.run(
        [node, str(CHECKER / "validate.mjs"), str(document)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_asyncapi_document_has_no_error_diagnostics() -> None:
    """The shipped document, with its $refs to the JSON Schemas, parses without errors."""
    result = parse(CONTRACTS / "asyncapi.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid AsyncAPI 3.0.0 document" in result.stdout


def test_a_broken_document_is_rejected(tmp_path: Path) -> None:
    """An operation with a v2-style action and a $ref to a schema file that is not there
    make the check exit 1, naming each problem."""
    for path in CONTRACTS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    doc = json.loads((CONTRACTS / "asyncapi.json").read_text())
    next(iter(doc["operations"].values()))["action"] = "publish"
    message = doc["components"]["messages"]["v1Event"]
    message["payload"]["schema"]["$ref"] = "./missing.schema.json"
    (tmp_path / "asyncapi.json").write_text(json.dumps(doc))
    result = parse(tmp_path / "asyncapi.json")
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("error ")]
    assert any("action" in line for line in errors), result.stdout
    assert any("missing.schema.json" in line for line in errors), result.stdout
