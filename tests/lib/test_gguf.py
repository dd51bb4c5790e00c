"""``-m FILE.gguf``: the cache of converted folders (keyed by content, written atomically under a lock,
reused), its use by ``resolve_model`` and resume identities, and the one-line errors. The conversion
itself is replaced by a copy of the tiny model here (a real GGUF is in tests/real)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from codeplan_tools.core.errors import CannotCreate, InputMissing, MissingDependency
from codeplan_tools.formats import gguf


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("CODEPLAN_CACHE", str(root))
    return root


@pytest.fixture
def fake_convert(monkeypatch, tiny_model):
    """Replace the dequantization with a copy of the tiny model; records each call."""
    calls: list[str] = []

    def convert(src: Path, out: Path) -> None:
        calls.append(src.read_bytes().decode())
        for f in Path(tiny_model).iterdir():
            shutil.copy(f, out / f.name)

    monkeypatch.setattr(gguf, "_convert", convert)
    return calls


def _gguf(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


def test_cache_root_follows_codeplan_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("CODEPLAN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf.cache_root() == tmp_path / "xdg" / "codeplan"
    monkeypatch.setenv("CODEPLAN_CACHE", str(tmp_path / "mine"))
    assert gguf.cache_root() == tmp_path / "mine"


def test_converted_once_per_content_and_reused(cache, fake_convert, tmp_path):
    a = _gguf(tmp_path / "model.gguf", "weights v1")
    copy = _gguf(tmp_path / "elsewhere.gguf", "weights v1")
    first = gguf.converted_model(a)
    assert first.parent == cache / "gguf" and first.name.startswith("model-")
    assert (first / "config.json").is_file() and (first / gguf.DONE_MARKER).is_file()
    assert gguf.converted_model(a) == first and fake_convert == ["weights v1"]  # reused
    # Same content under another name: the content decides, but the folder is named after the file.
    assert gguf.converted_model(copy).name.split("-")[-1] == first.name.split("-")[-1]
    _gguf(a, "weights v2")  # changed in place: a new folder
    assert gguf.converted_model(a) != first and fake_convert[-1] == "weights v2"
    assert not [p for p in (cache / "gguf").iterdir() if p.name.startswith(".")]  # no temp folder left


def test_a_failed_conversion_leaves_nothing_and_an_old_conversion_is_redone(
    cache, fake_convert, monkeypatch, tmp_path
):
    src = _gguf(tmp_path / "m.gguf", "w")
    real = gguf._convert

    def broken(src: Path, out: Path) -> None:
        (out / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "_convert", broken)
    with pytest.raises(KeyboardInterrupt):
        gguf.converted_model(src)
    assert [p.name for p in (cache / "gguf").iterdir() if p.is_dir() and p.name != "sha256"] == []
    monkeypatch.setattr(gguf, "_convert", real)
    folder = gguf.converted_model(src)
    marker = folder / gguf.DONE_MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "conversion": gguf.CONVERSION - 1}))
    assert gguf.converted_model(src) == folder and len(fake_convert) == 2  # converted again


def test_two_processes_convert_once(cache, tmp_path, tiny_model):
    """The lock: a second process waits for the first conversion and takes its folder."""
    src = _gguf(tmp_path / "m.gguf", "w")
    script = textwrap.dedent(
        f"""
        import shutil, sys, time
        from pathlib import Path
        from codeplan_tools.formats import gguf
        def convert(src, out):
            with open({str(tmp_path / "calls")!r}, "a") as fh:
                fh.write("x")
            time.sleep(1.0)
            for f in Path({str(tiny_model)!r}).iterdir():
                shutil.copy(f, out / f.name)
        gguf._convert = convert
        print(gguf.converted_model({str(src)!r}, quiet=True))
        """
    )
    env = {**os.environ, "CODEPLAN_CACHE": str(cache)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env) for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].decode().strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] and (tmp_path / "calls").read_text() == "x"


def test_resolve_model_takes_the_gguf_as_its_converted_folder(cache, fake_convert, tmp_path, tiny_model):
    """Every command's -m FILE.gguf: the folder is what loads, and the resume identity is the folder's
    content, so the file and a written-out copy of the folder resume each other."""
    from codeplan_tools.engines import EngineSpec
    from codeplan_tools.engines.model_files import fingerprint, resolve_model

    src = _gguf(tmp_path / "m.gguf", "w")
    found = resolve_model(str(src))
    assert Path(found.path).parent == cache / "gguf" and found.name == str(src)
    assert found.identity == fingerprint(found.path)
    assert resolve_model(str(src), need="tokenizer").path == found.path
    copy = tmp_path / "copy"
    shutil.copytree(found.path, copy)
    for engine in ("hf", "vllm"):
        assert (
            EngineSpec(model=str(src), engine=engine).identity()
            == EngineSpec(model=str(copy), engine=engine).identity()
        )


def test_convert_gguf_writes_where_asked_and_refuses_what_it_cannot(cache, fake_convert, tmp_path):
    src = _gguf(tmp_path / "m.gguf", "w")
    out = gguf.convert_gguf(src, tmp_path / "out", quiet=True)
    assert (out / "config.json").is_file() and out == tmp_path / "out"
    with pytest.raises(CannotCreate, match="exists and is not an empty folder"):
        gguf.convert_gguf(src, out)
    with pytest.raises(CannotCreate, match="does not exist or is not writable"):
        gguf.convert_gguf(src, tmp_path / "no" / "such" / "out")
    with pytest.raises(InputMissing, match="no such .gguf file"):
        gguf.convert_gguf(tmp_path / "missing.gguf", tmp_path / "out2")


def test_a_missing_extra_names_it(cache, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` raise ImportError
    src = _gguf(tmp_path / "m.gguf", "w")
    with pytest.raises(MissingDependency, match=r"pip install 'codeplan\[gguf\]'"):
        gguf.converted_model(src, quiet=True)
    assert [p for p in (cache / "gguf").iterdir() if p.is_dir() and p.name != "sha256"] == []
