"""GGUF model files in: a ``.gguf`` (llama.cpp, Ollama, LM Studio) becomes a plain model folder
(safetensors weights, tokenizer, chat template, generation config) that every engine and command
loads.

vLLM's own GGUF loading does not work on CPU, and transformers' GGUF loader dequantizes into a model
that ``save_pretrained`` refuses ("quantized with GGUF"). So the file is dequantized once through
transformers (``gguf_file=``), the weights are moved into a model built from the same config without
its ``quantization_config``, and that model is saved (fp32: the dequantized values exactly).

- :func:`converted_model` is what ``-m FILE.gguf`` goes through
  (:func:`codeplan_tools.engines.model_files.resolve_model`): the folder
  ``<cache>/gguf/<stem>-<sha256[:16]>`` keyed by the file's content, converted on first use and
  reused by every later command and run. ``<cache>`` is ``$CODEPLAN_CACHE``, else
  ``$XDG_CACHE_HOME/codeplan``, else ``~/.cache/codeplan``.
- :func:`convert_gguf` writes the folder where asked (``codeplan init-model --from-gguf FILE OUT``).

Both write into a temporary folder beside the target and rename it into place, under a lock file, so a
second process waits for the first conversion instead of repeating it and no reader ever sees half a
folder. The file's SHA-256 is remembered per (path, size, mtime) so a multi-GB file is hashed once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from codeplan_tools.core.errors import CannotCreate, EngineError, InputMissing, require

EXTRA = "gguf"
# Written last into a converted folder: its source and how it was converted. A folder whose marker
# has another CONVERSION version is converted again (the conversion changed).
DONE_MARKER = "codeplan-gguf.json"
CONVERSION = 2


def cache_root() -> Path:
    """``$CODEPLAN_CACHE``, else ``$XDG_CACHE_HOME/codeplan``, else ``~/.cache/codeplan``."""
    if os.environ.get("CODEPLAN_CACHE"):
        return Path(os.environ["CODEPLAN_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "codeplan"


def is_gguf(path: str | os.PathLike) -> bool:
    """A file whose name ends in ``.gguf``."""
    p = Path(path)
    return p.suffix.lower() == ".gguf" and p.is_file()


def file_sha256(path: str | os.PathLike) -> str:
    """The file's SHA-256 (hex), remembered in the cache per (absolute path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = hashlib.sha256(f"{p}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache_root() / "gguf" / "sha256" / key
    try:
        known = memo.read_text().strip()
        if len(known) == 64:
            return known
    except OSError:
        pass
    with open(p, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    try:  # a read-only cache only costs the hash next time
        memo.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(memo, digest)
    except OSError:
        pass
    return digest


def converted_model(gguf_file: str | os.PathLike, *, quiet: bool = False) -> Path:
    """The cached folder of ``gguf_file``, converted now when it is not there yet."""
    src = Path(gguf_file)
    digest = file_sha256(src)
    target = cache_root() / "gguf" / f"{_safe_stem(src)}-{digest[:16]}"
    if _is_done(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CannotCreate(
            f"cannot create the model cache {target.parent} ({exc}); set CODEPLAN_CACHE to a writable folder"
        ) from exc
    _convert_locked(src, target, digest, quiet=quiet)
    return target


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike, *, quiet: bool = False) -> Path:
    """Write the converted folder of ``gguf_file`` to ``out_dir`` (which must not exist or be empty)."""
    src, out = Path(gguf_file), Path(out_dir)
    if not is_gguf(src):
        raise InputMissing(f"--from-gguf {gguf_file}: no such .gguf file")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CannotCreate(f"{out}: exists and is not an empty folder")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise CannotCreate(f"{out}: its folder {out.parent} does not exist or is not writable")
    if out.is_dir():
        out.rmdir()  # empty: the rename below puts the finished folder there
    _convert_locked(src, out, file_sha256(src), quiet=quiet)
    return out


def _convert_locked(src: Path, target: Path, digest: str, *, quiet: bool) -> None:
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if _is_done(target):
            return  # another process converted it while we waited
        if target.exists():
            shutil.rmtree(target)  # an unfinished folder left by a killed run of an older version
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the folder is a model anyone may read
        try:
            if not quiet:
                print(f"codeplan: converting {src} to a model folder in {target}", file=sys.stderr)
            _convert(src, tmp)
            _write_atomic(
                tmp / DONE_MARKER,
                json.dumps({"gguf": src.name, "sha256": digest, "conversion": CONVERSION}) + "\n",
            )
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _convert(src: Path, out: Path) -> None:
    """Dequantize ``src`` with transformers and save a plain folder into ``out``."""
    require("gguf", EXTRA)
    require("accelerate", EXTRA)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(src.parent), src.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, RuntimeError) as exc:  # an architecture transformers cannot read
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"--model {src}: transformers cannot load this GGUF file ({text[:300]})") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A model built on the meta device takes the dequantized tensors as they are (no second copy).
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    if plain.config.tie_word_embeddings:
        plain.tie_weights()
    try:
        plain.generation_config = GenerationConfig.from_model_config(config)
    except Exception:  # keep the loaded one when the config cannot give one
        plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out / "tokenizer_config.json")


def _portable_tokenizer_config(path: Path) -> None:
    """transformers 5 names its generic class ``TokenizersBackend``, which 4.x (and vLLM builds pinned
    to it) cannot import; the fast class loads ``tokenizer.json`` in both. Drop the loader's own
    bookkeeping keys too."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _is_done(folder: Path) -> bool:
    try:
        marker = json.loads((folder / DONE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("conversion") == CONVERSION


def _safe_stem(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)
    return stem[:80] or "model"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
