"""Prompt templates (grammar/template.lark): slots, literal braces, rendering, prompt layout."""

from __future__ import annotations

import pytest

from halo_sql.errors import ParseError, SourceLocation
from halo_sql.llm.base import OutputSpec
from halo_sql.logical.llm_call import LLMCall, LLMFunction
from halo_sql.parser.template import PromptTemplate, Slot, parse_template, values_last

# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "slots"),
    [
        ("Summarize: {text}", [Slot(None, "text")]),
        ("Compare {o.o_comment} with {c.c_comment}", [Slot("o", "o_comment"), Slot("c", "c_comment")]),
        ("Is {  text } late?", [Slot(None, "text")]),
        ('Read {"Review Body"}', [Slot(None, "Review Body")]),
        ('Read {r."Body"}', [Slot("r", "Body")]),
        ("No slots at all.", []),
        ("{a}{b}", [Slot(None, "a"), Slot(None, "b")]),
        ("{_x1}", [Slot(None, "_x1")]),
    ],
)
def test_slots_are_read_in_order(text: str, slots: list[Slot]) -> None:
    assert list(parse_template(text).slots) == slots


def test_doubled_braces_are_literal_text_not_slots() -> None:
    template = parse_template('Answer as {{"ok": true}} for {text}')
    assert template.slots == (Slot(None, "text"),)
    assert template.parts == ('Answer as {"ok": true} for ', Slot(None, "text"))


def test_adjacent_literal_pieces_merge_into_one_part() -> None:
    assert parse_template("a {{ b }} c").parts == ("a { b } c",)


def test_slot_prints_qualified_name() -> None:
    assert str(Slot("r", "text")) == "r.text"
    assert str(Slot(None, "text")) == "text"
    assert str(Slot("r", "Review Body")) == 'r."Review Body"'


def test_str_round_trips_through_the_parser() -> None:
    for text in ("Is {r.text} about {{delivery}}?", "Summarize: {text}", 'Read {"Review Body"}'):
        assert str(parse_template(str(parse_template(text)))) == str(parse_template(text))
        assert parse_template(str(parse_template(text))) == parse_template(text)


# -- rendering ----------------------------------------------------------------------------------


def test_slots_at_the_end_render_in_place() -> None:
    template = parse_template("Is this review about delivery? {r.text}")
    assert template.render(["It came late."]) == "Is this review about delivery? It came late."
    assert template.static_prefix == "Is this review about delivery? "
    assert not template.text_after_first_slot


def test_slots_anywhere_render_in_place_as_written() -> None:
    """The prompt is the template with each slot replaced by its value, nothing more."""
    template = parse_template("Does {text} mention {product}? Answer briefly.")
    assert template.render(["It broke.", "kettle"]) == "Does It broke. mention kettle? Answer briefly."
    assert template.static_prefix == "Does "
    assert template.text_after_first_slot


def test_rendered_prompts_of_different_rows_share_the_static_prefix() -> None:
    template = parse_template("Review of the {product}: {text}")
    first, second = template.render(["kettle", "ok"]), template.render(["lamp", "bad"])
    assert first.startswith(template.static_prefix)
    assert second.startswith(template.static_prefix)


def test_values_last_layout_puts_the_instruction_first_and_the_values_after_it() -> None:
    """The opt-in layout rewrite: every row shares the whole instruction as a prefix."""
    template = values_last(parse_template("Does {text} mention {product}?"))
    assert template.render(["It broke.", "kettle"]) == (
        "Does [text] mention [product]?\n\ntext: It broke.\nproduct: kettle"
    )
    assert template.static_prefix == "Does [text] mention [product]?\n\n"
    assert str(template) == "Does [text] mention [product]? <- (text, product)"
    assert values_last(template) == template


def test_flockmtl_layout_lists_named_inputs_after_the_prompt() -> None:
    template = PromptTemplate(("Summarize the review", Slot(None, "text"), Slot(None, "stars")), data_last=True)
    assert template.render(["Fine.", "4"]) == "Summarize the review\n\ntext: Fine.\nstars: 4"
    assert str(template) == "Summarize the review <- (text, stars)"


def test_render_checks_the_number_of_values() -> None:
    with pytest.raises(ValueError, match="2 slots, got 1"):
        parse_template("{a} and {b}").render(["x"])


# -- the full prompt of a call: the template as written ---------------------------------------


@pytest.mark.parametrize(
    "output",
    [
        OutputSpec.text(),
        OutputSpec.boolean(),
        OutputSpec.choice(["good", "bad"]),
        OutputSpec.json({"type": "object", "properties": {"age": {"type": "integer"}}}),
    ],
)
def test_the_prompt_is_the_rendered_template_whatever_the_output_type(output: OutputSpec) -> None:
    """Constrained decoding enforces the output type; no words are added to the user's prompt."""
    call = LLMCall(LLMFunction.COMPLETE, parse_template("Rate {text} now"), "m", output=output)
    assert call.prompt(["fine"]) == "Rate fine now"
    assert call.request(["fine"]).output == output


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Summarize {text", "bad prompt template at character"),
        ("Summarize text}", "bad prompt template"),
        ("{a b}", "bad prompt template"),
        ("{}", "bad prompt template"),
        ("{1abc}", "bad prompt template"),
        ("{a.b.c}", "bad prompt template"),
        ("", "prompt template is empty"),
        ("   ", "prompt template is empty"),
    ],
)
def test_bad_templates_raise_parse_error(text: str, fragment: str) -> None:
    with pytest.raises(ParseError, match=fragment):
        parse_template(text)


def test_template_errors_explain_slot_syntax_and_carry_the_sql_location() -> None:
    where = SourceLocation(line=3, column=12)
    with pytest.raises(ParseError) as info:
        parse_template("Is {text late?", location=where)
    assert info.value.location == where
    assert str(info.value).startswith("line 3, column 12: ")
    assert "{column}" in str(info.value) and "{{" in str(info.value)
