"""The vLLM backend on the tiny random-weight model: answers keep their shape, counts are real.

All engine tests share the session's one engine (`vllm_backend` in conftest.py). The model's
weights are random, so these tests pin constraints and accounting, never what the text says.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jsonschema
import pytest

from halo_sql.errors import ModelError
from halo_sql.llm import vllm_compat
from halo_sql.llm.base import DecodingParams, LLMRequest, OutputSpec
from halo_sql.llm.vllm_backend import VLLMBackend, prompt_token_ids

# ---- the version seam (no engine) ------------------------------------------------------------


def test_installed_vllm_is_the_version_the_compat_module_was_written_for() -> None:
    pytest.importorskip("vllm")
    assert vllm_compat.vllm_version().startswith(vllm_compat.TESTED_VLLM_VERSION + ".")


def test_labels_and_schemas_become_structured_output_constraints() -> None:
    pytest.importorskip("vllm")
    boolean = vllm_compat.sampling_params(LLMRequest("Late?", OutputSpec.boolean()))
    choice = vllm_compat.sampling_params(LLMRequest("Mood?", OutputSpec.choice(["up", "down"])))
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    as_json = vllm_compat.sampling_params(LLMRequest("Give JSON:", OutputSpec.json(schema)))
    text = vllm_compat.sampling_params(LLMRequest("Say hi", params=DecodingParams(max_tokens=7)))
    assert boolean.structured_outputs.choice == ["yes", "no"]
    assert choice.structured_outputs.choice == ["up", "down"]
    assert as_json.structured_outputs.json == schema
    assert text.structured_outputs is None
    assert (text.max_tokens, text.temperature) == (7, 0.0)


def test_seed_is_passed_only_when_sampling_is_random() -> None:
    pytest.importorskip("vllm")
    greedy = vllm_compat.sampling_params(LLMRequest("x", params=DecodingParams(seed=5)))
    sampled = vllm_compat.sampling_params(
        LLMRequest("x", params=DecodingParams(temperature=0.7, seed=5))
    )
    assert greedy.seed is None
    assert sampled.seed == 5


def test_prefix_caching_cannot_be_switched_off() -> None:
    pytest.importorskip("vllm")
    kwargs = vllm_compat.engine_kwargs(
        "/m",
        block_size=32,
        max_model_len=None,
        kv_cache_gib=1.5,
        dtype=None,
        seed=0,
        enforce_eager=None,
        max_num_seqs=None,
        extra={"enable_prefix_caching": False},
    )
    assert kwargs["enable_prefix_caching"] is True
    assert kwargs["kv_cache_memory_bytes"] == int(1.5 * 2**30)


def test_missing_vllm_gives_model_error_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ModelError, match=r"halo-sql\[cpu\]"):
        VLLMBackend("/nowhere")


def test_chat_template_wraps_the_prompt_as_one_user_turn(tiny_model_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    plain = prompt_token_ids(tokenizer, "Is it late?")
    chat = prompt_token_ids(tokenizer, "Is it late?", chat_template=True)
    assert plain == tokenizer.encode("Is it late?")
    assert tokenizer.decode(chat) == "<s>[user] Is it late?\n[assistant] "
    assert chat.count(tokenizer.bos_token_id) == 1


# ---- model loading errors (caught before an engine starts) ------------------------------------


def test_missing_model_directory_gives_model_error_naming_the_path(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match="does not exist") as info:
        VLLMBackend(str(missing))
    assert str(missing) in str(info.value)


def test_directory_without_config_gives_model_error(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    with pytest.raises(ModelError, match="no config.json"):
        VLLMBackend(str(tmp_path))


def test_truncated_weights_give_model_error_naming_the_file(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("vllm")
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match="model.safetensors is damaged"):
        VLLMBackend(str(damaged))


# ---- the engine (one per session) -------------------------------------------------------------

PREFIX = (
    "You are a careful analyst of customer reviews. Read the review below, then answer the "
    "question about it. Consider delivery, product quality, price and the tone of the customer. "
)


@pytest.mark.vllm
def test_text_requests_get_text_and_real_token_counts(vllm_backend: VLLMBackend) -> None:
    prompts = [PREFIX + "Review: the box arrived damaged. Summary:", "Hello there, customer"]
    responses = vllm_backend.generate(
        [LLMRequest(p, params=DecodingParams(max_tokens=12)) for p in prompts]
    )
    assert len(responses) == 2
    for prompt, response in zip(prompts, responses, strict=True):
        assert response.error is None
        assert response.prompt_tokens == vllm_backend.count_tokens(prompt)
        assert 0 < response.output_tokens <= 12
        assert response.finish_reason in ("stop", "length")
        assert response.finish_reason == "stop" or response.output_tokens == 12


@pytest.mark.vllm
def test_boolean_and_choice_answers_are_always_one_of_the_labels(
    vllm_backend: VLLMBackend,
) -> None:
    labels = ["positive", "negative", "neutral", "mixed feelings"]
    requests = [
        LLMRequest(PREFIX + f"Review {i}: {text} Answer yes or no:", OutputSpec.boolean())
        for i, text in enumerate(["late again", "great price", "box damaged", "fine"])
    ] + [
        LLMRequest(PREFIX + f"Review {i}: {text} Sentiment:", OutputSpec.choice(labels))
        for i, text in enumerate(["late again", "great price", "box damaged", "fine"])
    ]
    responses = vllm_backend.generate(requests)
    assert [r.text in ("yes", "no") for r in responses[:4]] == [True] * 4
    assert [r.text in labels for r in responses[4:]] == [True] * 4
    assert {r.finish_reason for r in responses} == {"stop"}


@pytest.mark.vllm
def test_label_budget_is_raised_so_the_longest_label_fits(vllm_backend: VLLMBackend) -> None:
    request = LLMRequest(
        "Sentiment:",
        OutputSpec.choice(["mixed feelings overall", "negative"]),
        DecodingParams(max_tokens=1),
    )
    (response,) = vllm_backend.generate([request])
    assert response.text in ("mixed feelings overall", "negative")
    assert response.finish_reason == "stop"


@pytest.mark.vllm
def test_json_answers_parse_or_report_length_honestly(vllm_backend: VLLMBackend) -> None:
    schemas = [
        {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        },
        {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
        {
            "type": "object",
            "properties": {
                "label": {"enum": ["late", "on time"]},
                "note": {"type": "string", "maxLength": 12},
            },
            "required": ["label", "note"],
        },
    ]
    requests = [
        LLMRequest(PREFIX + "Give JSON:", OutputSpec.json(s), DecodingParams(max_tokens=40))
        for s in schemas
    ]
    responses = vllm_backend.generate(requests)
    for schema, response in zip(schemas, responses, strict=True):
        if response.finish_reason == "stop":
            jsonschema.validate(json.loads(response.text), schema)
        else:
            assert response.finish_reason == "length"
            assert response.output_tokens == 40
    # A closed object of one boolean cannot run long: it must parse.
    assert json.loads(responses[0].text)["ok"] in (True, False)


@pytest.mark.vllm
def test_prompts_sharing_a_long_prefix_report_cached_prompt_tokens(
    vllm_backend: VLLMBackend,
) -> None:
    # A prefix no other test uses, so the first prompt of the batch starts with a cold cache.
    prefix = "Cache probe: " + " ".join(f"clerk {i} sleeps furiously;" for i in range(40))
    assert vllm_backend.count_tokens(prefix) >= 200
    prompts = [prefix + f" Order {i} shipped late. Urgent?" for i in range(4)]
    responses = vllm_backend.generate(
        [LLMRequest(p, OutputSpec.boolean(), DecodingParams(max_tokens=4)) for p in prompts]
    )
    assert responses[0].cached_prompt_tokens == 0
    for response in responses[1:]:
        assert response.cached_prompt_tokens > 0
        assert response.cached_prompt_tokens <= response.prompt_tokens
        assert response.cached_prompt_tokens % 32 == 0  # whole blocks of block_size=32


@pytest.mark.vllm
def test_greedy_decoding_is_deterministic_across_calls(vllm_backend: VLLMBackend) -> None:
    requests = [
        LLMRequest(
            PREFIX + "Review: refund requested. Reply:", params=DecodingParams(max_tokens=16)
        ),
        LLMRequest("Classify:", OutputSpec.choice(["a", "b", "c"])),
    ]
    first = vllm_backend.generate(requests)
    second = vllm_backend.generate(requests)
    assert [r.text for r in first] == [r.text for r in second]


@pytest.mark.vllm
def test_a_rejected_request_gets_an_error_and_the_rest_of_the_batch_is_answered(
    vllm_backend: VLLMBackend,
) -> None:
    too_long = "the " * (vllm_backend.context_window + 10)
    bad_schema = OutputSpec.json({"type": "no-such-type"})
    requests = [
        LLMRequest("Is it late?", OutputSpec.boolean()),
        LLMRequest(""),
        LLMRequest(too_long),
        LLMRequest("Give JSON:", bad_schema),
        LLMRequest("Is it early?", OutputSpec.boolean()),
    ]
    responses = vllm_backend.generate(requests)
    assert [r.error is None for r in responses] == [True, False, False, False, True]
    assert responses[1].error == "empty prompt"
    assert "context window of 4096" in (responses[2].error or "")
    assert "no-such-type" in (responses[3].error or "")
    assert responses[0].text in ("yes", "no") and responses[4].text in ("yes", "no")


@pytest.mark.vllm
def test_backend_reports_its_name_and_context_window(
    vllm_backend: VLLMBackend, tiny_model_dir: Path
) -> None:
    assert vllm_backend.name == f"vllm:{tiny_model_dir}"
    assert vllm_backend.context_window == 4096
    assert vllm_backend.generate([]) == []


@pytest.mark.vllm
def test_reset_cache_starts_the_prefix_cache_cold(vllm_backend: VLLMBackend) -> None:
    prompt = "Reset check. " + "the same long shared instruction words " * 12
    requests = [LLMRequest(prompt + "one"), LLMRequest(prompt + "two")]
    vllm_backend.generate(requests)
    assert vllm_backend.generate(requests)[0].cached_prompt_tokens > 0
    vllm_backend.reset_cache()
    assert vllm_backend.generate(requests)[0].cached_prompt_tokens == 0
