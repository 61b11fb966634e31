"""tagspace/ is the pure library: it never imports the daemon or any service client."""

import ast
from pathlib import Path

FORBIDDEN = {"daemon", "kafka", "redis", "prometheus_client", "fastapi", "starlette", "aiohttp"}


def test_library_imports_no_service_code():
    root = Path(__file__).resolve().parents[1] / "tagspace"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_no_code_path_unpickles():
    """Checkpoints are safetensors + JSON + TSV and payloads are JSON: nothing calls pickle,
    torch.load (pickle-based) or numpy's allow_pickle."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*root.joinpath("tagspace").rglob("*.py"), *root.joinpath("daemon").rglob("*.py")]:
        text = path.read_text()
        for bad in ("import pickle", "from pickle", "torch.load(", "allow_pickle=True",
                    "import dill", "import joblib"):
            if bad in text:
                offenders.append(f"{path.name}: {bad}")
    assert offenders == []
