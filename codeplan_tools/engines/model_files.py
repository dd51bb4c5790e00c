"""Finding a ``--model`` (local folder or Hugging Face hub id), refusing what cannot work with one
line, and the model's content identity (what the resume key holds).

**Finding it** (:func:`resolve_model`), before anything heavy is loaded:

- An existing local folder is used as it is. It must hold a ``config.json`` and a tokenizer
  (``tokenizer.json``, ``tokenizer_config.json``, ...); otherwise
  :class:`~codeplan_tools.core.errors.InputMissing` (exit 66) names what is missing.
- A ``.gguf`` file is converted once into a plain folder in the cache, keyed by the file's SHA-256
  (:mod:`codeplan_tools.formats.gguf`), and that folder is what every engine, ``pack`` and
  ``finetune`` load; its identity is the folder's fingerprint, so the file, the cached folder and a
  copy written by ``init-model --from-gguf`` resume each other.
- A name that is not a valid hub id (``./ckpt``, ``/abs/path``, ``tiny/``, ``a/b/c``) and does not
  exist is a missing folder (66), at once.
- A hub id (``meta-llama/Meta-Llama-3-8B-Instruct``) is looked up in the local Hugging Face cache
  first: a complete cached snapshot is loaded from its folder, with no network at all. Otherwise
  ``HF_HUB_OFFLINE=1`` fails at once, and else *one* ``model_info`` request with the hub's own
  ``HF_HUB_ETAG_TIMEOUT`` (10 s by default) decides: a missing, private or unreachable model fails
  with one line ("no local folder X, and the hub could not be reached / has no model X"; exit 66)
  instead of the libraries' retry loops (~50 s); an existing one is downloaded by the engine as usual.
- A model whose ``config.json`` (or tokenizer config) needs its own Python code that transformers
  does not ship (``auto_map`` with an unknown ``model_type``) is refused without
  ``--trust-remote-code`` (:class:`~codeplan_tools.core.errors.NotPermitted`, exit 77).
  :func:`loading` maps what the loaders still raise (missing files, the remote-code refusal) to the
  same one-line errors.

**Identity** (:func:`fingerprint`): the resume key must change when the model's content changes (a
re-exported ``ckpt/``) and must not change with its spelling (``tiny``, ``tiny/``, ``/abs/tiny``).
Hashing multi-GB weights at every start would take minutes, so the fingerprint is a SHA-256 over the
folder's top-level files, each by name and:

- config, tokenizer and code files (``*.json``, ``*.jinja``, ``*.txt``, ``*.model``, ``*.tiktoken``,
  ``*.py``): their whole bytes;
- ``*.safetensors``: the size, the header (tensor names, dtypes, shapes, offsets) and a 4 KiB sample
  from the middle of every tensor's data. A fine-tune moves (nearly) every trained tensor, a merged
  LoRA included, so a sample per tensor sees it; reading a few KiB per tensor costs milliseconds even
  for a 70B model. Other weight files (``*.bin``, ``*.pt``, ``*.pth``, ``*.gguf``): the size and 16
  evenly spaced 64 KiB blocks.

Other files (README, logs, subfolders such as ``original/``) do not count. A hub id's identity is
its commit (the cached snapshot's name, or ``model_info``'s sha), so a cached and a just-downloaded
run agree. For a model served over HTTP the identity is its served name (nothing local to read).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from codeplan_tools.core.errors import EngineError, InputMissing, NotPermitted

TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
WHOLE_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken", ".py")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TENSOR_SAMPLE = 4096
BLOCK_SAMPLE, BLOCKS = 1 << 16, 16


@dataclass(frozen=True)
class ModelSource:
    """Where a ``--model`` is loaded from and what identifies it."""

    name: str
    """As the user gave it (kept in ``meta`` for provenance)."""
    path: str
    """What to hand to the loader: a local folder or file, or the hub id (the loader downloads it)."""
    display: str
    """Short and spelling-independent, for the resume settings: the folder's name or the hub id."""
    identity: str | None
    """Content fingerprint (local), commit (hub), or None when it could not be found."""
    local: bool


def resolve_model(
    name: str, *, need: str = "model", option: str = "--model", strict: bool = True
) -> ModelSource:
    """Find ``name`` (see the module docstring). ``need``: ``model`` (config, weights and tokenizer),
    ``weights`` (config and weights: the tokenizer comes from elsewhere) or ``tokenizer``. With ``strict=False`` nothing is raised: a model that cannot be found gets
    ``identity=None`` (library callers that only want the resume settings)."""
    text = str(name)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _converted_gguf(path, text, need, option, strict)
    if path.exists():
        if strict:
            _check_folder(path, text, need, option)
        try:
            identity = fingerprint(path, need)
        except OSError as exc:
            if strict:
                raise InputMissing(f"{option} {text}: cannot be read ({exc})") from exc
            identity = None
        return ModelSource(text, str(path), path.resolve().name, identity, True)
    if not _is_hub_id(text):
        if strict:
            raise InputMissing(f"{option} {text}: no such folder")
        return ModelSource(text, text, text, None, False)
    cached = _cached_snapshot(text, need)
    if cached is not None:
        return ModelSource(text, str(cached), text, cached.name, True)
    commit = _hub_commit(text, option, strict)
    return ModelSource(text, text, text, commit, False)


def _converted_gguf(path: Path, text: str, need: str, option: str, strict: bool) -> ModelSource:
    """The cached folder converted from a ``.gguf`` file (converted now on first use)."""
    from codeplan_tools.core.errors import CodeplanError
    from codeplan_tools.formats.gguf import converted_model

    try:
        folder = converted_model(path)
    except CodeplanError:
        if strict:
            raise
        return ModelSource(text, text, path.name, None, True)
    except OSError as exc:
        if strict:
            raise InputMissing(f"{option} {text}: cannot be read ({exc})") from exc
        return ModelSource(text, text, path.name, None, True)
    return ModelSource(text, str(folder), path.name, fingerprint(folder, need), True)


def refuse_remote_code(source: ModelSource, trust_remote_code: bool, option: str = "--model") -> None:
    """Raise NotPermitted when the model needs code transformers does not ship and it was not allowed."""
    if trust_remote_code or not source.local:
        return
    folder = Path(source.path)
    if not folder.is_dir():
        return
    config = _read_json(folder / "config.json")
    tok_config = _read_json(folder / "tokenizer_config.json")
    needs = []
    if "auto_map" in config:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if config.get("model_type") not in CONFIG_MAPPING:
            needs.append("config.json")
    if "AutoTokenizer" in (tok_config.get("auto_map") or {}):
        import transformers

        if getattr(transformers, str(tok_config.get("tokenizer_class")), None) is None:
            needs.append("tokenizer_config.json")
    if needs:
        raise NotPermitted(_remote_code_message(source.name, option, " and ".join(needs)))


@contextlib.contextmanager
def loading(source: ModelSource | str, option: str = "--model") -> Iterator[None]:
    """Turn what a loader (transformers, vLLM) raises about the model into one line: a refusal of
    remote code -> NotPermitted (77); a missing or unreadable file (OSError) -> InputMissing (66);
    a model the engine cannot use (ValueError: unknown architecture, context larger than the KV
    cache...) -> EngineError (69)."""
    name = source.name if isinstance(source, ModelSource) else str(source)
    try:
        yield
    except (OSError, ValueError) as exc:
        text = str(exc)
        if "trust_remote_code" in text or "trust-remote-code" in text:
            raise NotPermitted(_remote_code_message(name, option, "its files")) from exc
        if isinstance(exc, OSError):
            raise InputMissing(f"{option} {name}: cannot load it ({_first_line(exc)})") from exc
        raise EngineError(f"{option} {name}: the engine cannot use it ({_first_line(exc)})") from exc


def fingerprint(path: str | os.PathLike, need: str = "model") -> str:
    """The content identity of a model folder or file (see the module docstring). With
    ``need="tokenizer"`` only the small files count (a tokenizer-only use reads no weights)."""
    with_weights = need != "tokenizer"
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file())
    h = hashlib.sha256()
    for f in files:
        if f.name.endswith(WEIGHT_SUFFIXES):
            if not with_weights:
                continue
            h.update(f.name.encode() + b"\0")
            _weights_digest(f, h)
        elif f.name.endswith(WHOLE_SUFFIXES):
            h.update(f.name.encode() + b"\0")
            h.update(_file_sha256(f))
    return h.hexdigest()[:16]


# -- local folders ------------------------------------------------------------------------------


def _check_folder(path: Path, name: str, need: str, option: str) -> None:
    if path.is_file():
        raise InputMissing(f"{option} {name}: is a file; give the model's folder (or a .gguf file)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputMissing(f"{option} {name}: the folder cannot be read (permissions)")
    if need != "tokenizer" and not (path / "config.json").is_file():
        raise InputMissing(f"{option} {name}: not a model folder (no config.json)")
    if need != "weights" and not any((path / marker).is_file() for marker in TOKENIZER_MARKERS):
        hint = "; pass --tokenizer DIR" if option == "--model" else ""
        raise InputMissing(
            f"{option} {name}: the folder has no tokenizer ({' or '.join(TOKENIZER_MARKERS[:2])}){hint}"
        )


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _remote_code_message(name: str, option: str, where: str) -> str:
    return (
        f"{option} {name}: the model needs its own Python code ({where}), which is not run unless "
        "you pass --trust-remote-code (only for a model you trust)"
    )


def _file_sha256(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


def _weights_digest(path: Path, h) -> None:
    size = path.stat().st_size
    h.update(str(size).encode() + b"\0")
    with open(path, "rb") as fh:
        if path.suffix == ".safetensors" and _safetensors_digest(fh, size, h):
            return
        step = max(1, (size - BLOCK_SAMPLE) // (BLOCKS - 1)) if size > BLOCK_SAMPLE else size
        for k in range(BLOCKS):
            fh.seek(min(k * step, max(0, size - BLOCK_SAMPLE)))
            h.update(fh.read(BLOCK_SAMPLE))


def _safetensors_digest(fh, size: int, h) -> bool:
    """Header and a sample per tensor; False when the file is not a readable safetensors file."""
    head = fh.read(8)
    if len(head) < 8:
        return False
    n = int.from_bytes(head, "little")
    if n > size - 8 or n > 100 << 20:
        return False
    header = fh.read(n)
    try:
        tensors = json.loads(header)
    except ValueError:
        return False
    h.update(header)
    spans = sorted(
        tuple(t["data_offsets"])
        for k, t in tensors.items()
        if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t
    )
    base = 8 + n
    for begin, end in spans:
        middle = begin + max(0, (end - begin) // 2 - TENSOR_SAMPLE // 2)
        fh.seek(base + middle)
        h.update(fh.read(min(TENSOR_SAMPLE, end - middle)))
    return True


# -- the hub ------------------------------------------------------------------------------------


def _is_hub_id(text: str) -> bool:
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(text)
    except Exception:  # HFValidationError, or huggingface_hub missing: not a hub id we can use
        return False
    return True


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(v.upper() in ("1", "ON", "YES", "TRUE") for v in flags)


def _cached_snapshot(repo_id: str, need: str) -> Path | None:
    """The cached snapshot folder of ``repo_id`` (its main ref) when it has what ``need`` asks for."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), or an unreadable cache
        return None
    has_tokenizer = any((folder / m).is_file() for m in TOKENIZER_MARKERS)
    if need == "tokenizer":
        return folder if has_tokenizer else None
    # Weights transformers/vLLM load (not e.g. training_args.bin).
    weights = [
        f
        for f in folder.iterdir()
        if f.name.endswith((".safetensors", ".gguf"))
        or (f.name.startswith("pytorch_model") and f.name.endswith(".bin"))
    ]
    shards = set()
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        shards |= set((_read_json(folder / index).get("weight_map") or {}).values())
    complete = all((folder / shard).is_file() for shard in shards)
    if (folder / "config.json").is_file() and weights and complete and (has_tokenizer or need == "weights"):
        return folder
    return None


_HUB_COMMITS: dict[str, str | None] = {}


def _hub_commit(repo_id: str, option: str, strict: bool) -> str | None:
    """One short lookup of ``repo_id`` on the hub (its commit), remembered for this process."""
    if repo_id in _HUB_COMMITS:
        return _HUB_COMMITS[repo_id]
    if _hub_offline():
        if strict:
            raise InputMissing(
                f"{option} {repo_id}: no local folder of that name, and it is not in the Hugging Face "
                "cache (HF_HUB_OFFLINE=1)"
            )
        return None
    from huggingface_hub import constants, model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        info = model_info(repo_id, timeout=float(constants.HF_HUB_ETAG_TIMEOUT))
    except GatedRepoError as exc:
        if not strict:
            return None
        raise InputMissing(
            f"{option} {repo_id}: the model is gated on the hub; accept its license there and log in "
            f"(hf auth login) ({_first_line(exc)})"
        ) from exc
    except RepositoryNotFoundError as exc:
        if not strict:
            return None
        raise InputMissing(
            f"{option} {repo_id}: no local folder of that name, and the hub has no such model "
            "(or it is private: log in with hf auth login)"
        ) from exc
    except Exception as exc:  # any failure to talk to the hub: DNS, refused, timeout, HTTP 5xx
        if not strict:
            return None
        raise InputMissing(
            f"{option} {repo_id}: no local folder of that name, and the hub could not be reached "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    _HUB_COMMITS[repo_id] = info.sha
    return info.sha


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
